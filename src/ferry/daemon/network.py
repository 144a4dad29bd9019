"""ferryd's network setup from its configuration (SPEC §8): the PRECONFIG proxy (``[proxy]``,
else ferryd's environment) and the router the http transport asks."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ..errors import FerryError
from ..transfer.pac import PacResolver
from ..transfer.proxy import PreconfiguredProxy, ProxyRouter
from .config import Config

log = logging.getLogger("ferry.daemon")


def preconfigured_proxy(
    cfg: Config, environ: Mapping[str, str] | None = None
) -> PreconfiguredProxy:
    """``[proxy]`` when it names an http or https proxy, else the environment. A bad proxy
    URL in the configuration stops ferryd (E_INVALIDARG, naming the key)."""
    if cfg.proxy_http or cfg.proxy_https:
        try:
            return PreconfiguredProxy.build(
                cfg.proxy_http, cfg.proxy_https, cfg.proxy_no_proxy, "config"
            )
        except FerryError as exc:
            raise FerryError("E_INVALIDARG", f"[proxy]: {exc.message}") from None
    return PreconfiguredProxy.from_environment(os.environ if environ is None else environ)


def proxy_router(cfg: Config, environ: Mapping[str, str] | None = None) -> ProxyRouter:
    pre = preconfigured_proxy(cfg, environ)
    if pre.source != "none":
        log.info(
            "preconfigured proxy (%s): http %s, https %s, no_proxy %s",
            pre.source,
            pre.http or "direct",
            pre.https or "direct",
            ",".join(pre.no_proxy) or "-",
        )
    # AUTODETECT: the configured PAC script, else WPAD (only with [proxy] wpad = true).
    return ProxyRouter(pre, PacResolver(cfg.proxy_pac_url, wpad=cfg.proxy_wpad))
