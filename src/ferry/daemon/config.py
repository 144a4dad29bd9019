"""ferryd's configuration: defaults per mode (SPEC §1), overridden by a TOML file and flags."""

from __future__ import annotations

import grp
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import FerryError
from ..model.job import Limits
from ..model.network import COST_CHOICES, BandwidthPolicy, parse_bandwidth
from ..protocol import default_socket, default_state_dir


@dataclass(frozen=True)
class Config:
    system: bool
    socket: Path
    state_dir: Path
    log_level: str = "info"
    admin_groups: frozenset[int] = frozenset()
    max_background_jobs: int = 4
    time_slice: float = 30.0
    session_poll_interval: float = 5.0
    final_job_retention: float = 7 * 86400
    job_inactivity_timeout: float = 90 * 86400
    housekeeping_interval: float = 60.0
    # Transfers: seconds without a byte from the server (response or body) before a transfer
    # fails with the transient ERROR_WINHTTP_TIMEOUT; extra https trust anchors (PEM), added
    # to the system store.
    stall_timeout: float = 60.0
    ca_file: Path | None = None
    # Notifications (service/events.py, service/notify.py).
    min_notification_interval_ms: int = 500
    notify_timeout: float = 30.0
    notify_retry_delay: float = 60.0
    notify_max_attempts: int = 5
    notify_start_delay: float = 0.0  # for tests: hold command-line notifications at start
    # Metrics (service/metrics.py): also served on this TCP address ("HOST:PORT"), None: only
    # on the socket (GET /v1/metrics).
    metrics_listen: str | None = None
    limits: Limits = field(default_factory=Limits)
    # [kerberos] keytabs = {"UID" = "/path"}: keytabs of service identities (no session, no
    # credential cache) for implicit NEGOTIATE; read as that uid (SPEC §8.2).
    keytabs: dict[int, str] = field(default_factory=dict)
    # [proxy] (SPEC §8.1): the PRECONFIG proxy (http, https, no_proxy) and the PAC script of
    # AUTODETECT (pac_url); without http/https, ferryd's http_proxy/https_proxy/no_proxy.
    proxy_http: str | None = None
    proxy_https: str | None = None
    proxy_no_proxy: tuple[str, ...] = ()
    proxy_pac_url: str | None = None
    # WPAD is off unless asked for: its script comes over plain http from whoever answers
    # for wpad.DOMAIN, who could then name a proxy of theirs (docs/network.md).
    proxy_wpad: bool = False
    # Uploads (transfer/bits_upload.py): the first fragment's size in bytes (a 413 halves
    # it, never below 5 KiB), and how many drops in a row one run retries itself.
    upload_fragment_size: int = 32 << 20
    upload_retries: int = 4
    # Fleet mode (docs/fleet.md): [store] url = "postgresql://…" shares one job store among
    # several ferryd; None keeps the embedded SQLite file. lease_seconds: how long a worker's
    # claim on a transfer lasts without a heartbeat (a dead worker's jobs are taken over
    # within it); worker_id: this worker's name in the fleet (default HOST:PID).
    store_url: str | None = None
    lease_seconds: float = 15.0
    worker_id: str | None = None
    # The key that seals job secrets (passwords, write-only headers; security/secretbox.py);
    # None: STATE_DIR/credentials.key. Every worker of a fleet must name the same key, or a
    # secret sealed by one worker cannot be opened by the worker that takes its job over.
    credentials_key: Path | None = None
    # SPEC §10: [bandwidth] (the policy) and [network]: the network cost to assume (``auto``:
    # ask NetworkManager, else unrestricted), the D-Bus address to find NetworkManager on
    # (None: the system bus), and whether to watch routes over netlink.
    bandwidth: BandwidthPolicy = field(default_factory=BandwidthPolicy)
    network_cost: str = "auto"
    dbus_address: str | None = None
    netlink: bool = True
    # The file the config came from, read again on SIGHUP and ``ferry reload``.
    config_file: Path | None = None

    @property
    def socket_mode(self) -> int:
        return 0o666 if self.system else 0o600

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ferry.db"


_DAEMON_KEYS: dict[str, type | tuple[type, ...]] = {
    "socket": str,
    "state_dir": str,
    "log_level": str,
    "admin_groups": list,
    "max_background_jobs": int,
    "time_slice": (int, float),
    "session_poll_interval": (int, float),
    "final_job_retention": (int, float),
    "job_inactivity_timeout": (int, float),
    "housekeeping_interval": (int, float),
    "stall_timeout": (int, float),
    "ca_file": str,
    "min_notification_interval_ms": int,
    "notify_timeout": (int, float),
    "notify_retry_delay": (int, float),
    "notify_max_attempts": int,
    "notify_start_delay": (int, float),
    "upload_fragment_size": int,
    "upload_retries": int,
    "metrics_listen": str,
}


# What each [daemon] key means: the ferryd.toml(5) man page is generated from this and
# _DAEMON_KEYS (ferry/manpages.py), and a test requires one entry per key.
KEY_DOCS: dict[str, str] = {
    "socket": "Unix socket to listen on (default: per mode); unused under socket activation.",
    "state_dir": "Directory of the job store ferry.db and the lock file (default: per mode).",
    "log_level": "debug, info, warning or error.",
    "admin_groups": "Groups (names or gids) whose members are administrators; uid 0 always is.",
    "max_background_jobs": "Background jobs (high, normal, low) transferring at once; "
    "foreground jobs are not counted.",
    "time_slice": "Seconds a background job runs before it yields its slot to a waiting job "
    "of the same priority; 0 turns rotation off.",
    "session_poll_interval": "Seconds between scans for ended login sessions.",
    "final_job_retention": "Seconds an ACKNOWLEDGED or CANCELLED job stays listed.",
    "job_inactivity_timeout": "Seconds without modification after which a job is cancelled.",
    "housekeeping_interval": "Seconds between housekeeping passes (retention, inactivity).",
    "stall_timeout": "Seconds without a byte from a server before the transfer fails with "
    "the transient ERROR_WINHTTP_TIMEOUT.",
    "ca_file": "Extra trusted CA certificates (PEM) for https, added to the system store.",
    "min_notification_interval_ms": "Per subscriber and job, the minimum spacing of "
    "job-modification events that do not change the state; 0 disables it.",
    "notify_timeout": "Seconds a notification program may run before it is killed.",
    "notify_retry_delay": "First delay before a failed notification program runs again "
    "(doubling).",
    "notify_max_attempts": "Attempts to run a notification program.",
    "notify_start_delay": "Seconds the notifier waits at start-up (for tests).",
    "upload_fragment_size": "Bytes of an upload's first fragment (a 413 halves it, never "
    "below 5 KiB).",
    "upload_retries": "Dropped connections in a row one upload run retries by itself.",
    "metrics_listen": "HOST:PORT of a TCP listener serving the Prometheus metrics at "
    "/metrics (no authentication: keep it on loopback or a management network).",
}
LIMIT_DOCS: dict[str, str] = {
    "jobs_per_user": "Jobs one user may have (BG_E_TOO_MANY_JOBS_PER_USER).",
    "jobs_per_machine": "Jobs in the store (BG_E_TOO_MANY_JOBS_PER_MACHINE).",
    "files_per_job": "Files in one job (BG_E_TOO_MANY_FILES_IN_JOB).",
    "display_name_len": "Characters of a display name (BG_E_STRING_TOO_LONG).",
    "description_len": "Characters of a description (BG_E_STRING_TOO_LONG).",
    "url_len": "Characters of a remote name (BG_E_STRING_TOO_LONG).",
    "path_len": "Characters of a local name (BG_E_STRING_TOO_LONG).",
    "cmdline_len": "Characters of a notification command line (BG_E_STRING_TOO_LONG).",
}

# The other sections of ferryd.toml, for ferryd.toml(5) (ferry/manpages.py): section ->
# (what the section is, [(key, type, default, meaning)]). Their parsers are _keytabs,
# _proxy_section, _store_section and _network_sections; tests check each key is known there.
SECTION_DOCS: dict[str, tuple[str, list[tuple[str, str, str, str]]]] = {
    "kerberos": (
        "Service identities for implicit Negotiate credentials (SPEC 8.2).",
        [
            (
                "keytabs",
                "table",
                "{}",
                '{"UID" = "/path/to.keytab"}: the keytab a service '
                "identity (no login session, no credential cache) answers implicit Negotiate "
                "with; read as that uid, so it must be that uid's own file.",
            ),
        ],
    ),
    "proxy": (
        "The proxy of jobs whose proxy usage is PRECONFIG, and the PAC script of AUTODETECT "
        "(SPEC 8.1).",
        [
            (
                "http",
                "string",
                "none",
                "Proxy URL for http:// requests; without http and "
                "https, ferryd's http_proxy, https_proxy and no_proxy environment applies.",
            ),
            ("https", "string", "none", "Proxy URL for https:// requests."),
            (
                "no_proxy",
                "string or array",
                "none",
                "Hosts reached directly (a comma-separated string or a list; curl's rules).",
            ),
            (
                "pac_url",
                "string",
                "none",
                "http, https or file URL of a PAC script for AUTODETECT.",
            ),
            ("wpad", "boolean", "true", "Without pac_url, look for wpad.DOMAIN/wpad.dat."),
        ],
    ),
    "store": (
        "Fleet mode: several ferryd share one PostgreSQL job store; leave the section out "
        "for the embedded SQLite store.",
        [
            (
                "url",
                "string",
                "none",
                "postgresql://... URL of the shared job store (needs "
                "ferry[fleet]); without it, SQLite state_dir/ferry.db.",
            ),
            (
                "lease_seconds",
                "number",
                "15",
                "1..3600: how long a worker's claim on a "
                "transfer lasts without a heartbeat; a dead worker's jobs are taken over within "
                "it.",
            ),
            (
                "worker_id",
                "string",
                "HOST:PID",
                "This worker's name in the fleet (ferry fleet); unique per worker.",
            ),
            (
                "credentials_key",
                "string",
                "state_dir/credentials.key",
                "Absolute path of the key that seals job passwords and write-only headers "
                "(0600, ferryd's user; made if missing). Fleet mode: every worker must use "
                "the same key, or a job taken over cannot open its secrets.",
            ),
        ],
    ),
    "bandwidth": (
        "The bandwidth policy (SPEC 10), applied again on SIGHUP and ferry reload. Rates "
        'are bytes/s: 500000, "500k", "2M", "1.5MiB". Foreground jobs are never throttled.',
        [
            ("background_limit", "rate", "none", "Bytes/s shared by every non-foreground job."),
            (
                "yield_to_others",
                "boolean",
                "true",
                "Background jobs yield to other traffic on the link (a LEDBAT-style controller).",
            ),
            (
                "work_schedule",
                "table",
                "none",
                'days (["mon-fri"], names or ranges), start '
                'and end ("HH:MM", local time; an end before the start runs past midnight), '
                "work_limits and non_work_limits ({high = N, normal = N, low = N} or one rate; "
                "a missing priority is unlimited).",
            ),
            (
                "maintenance_schedule",
                "table",
                "none",
                "days, start, end and limits; inside "
                "this window its limits replace the work schedule's.",
            ),
        ],
    ),
    "network": (
        "Network cost and reachability (SPEC 10), applied again on SIGHUP and ferry reload.",
        [
            (
                "cost",
                "string",
                '"auto"',
                "The network cost to assume: unrestricted, "
                "metered, roaming, or auto (NetworkManager's Metered, else unrestricted).",
            ),
            (
                "dbus_address",
                "string",
                "the system bus",
                "The D-Bus address to find NetworkManager on.",
            ),
            (
                "netlink",
                "boolean",
                "true",
                "Watch routes and links over netlink: jobs with no "
                "route to their host wait, and resume as soon as the route is back.",
            ),
        ],
    ),
}


def _gid(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise FerryError("E_INVALIDARG", f"admin_groups: no group named {value!r}") from None
    raise FerryError("E_INVALIDARG", f"admin_groups: {value!r} is not a group name or gid")


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def load_config(
    system: bool,
    config_file: Path | None = None,
    socket: str | None = None,
    state_dir: str | None = None,
    log_level: str | None = None,
) -> Config:
    """Defaults for the mode, then the TOML file, then command-line flags."""
    cfg = Config(
        system=system,
        socket=Path(default_socket(system)),
        state_dir=Path(default_state_dir(system)),
    )
    if config_file is not None:
        cfg = _apply_file(cfg, config_file)
        cfg = replace(cfg, config_file=config_file)
    if socket:
        cfg = replace(cfg, socket=Path(socket))
    if state_dir:
        cfg = replace(cfg, state_dir=Path(state_dir))
    if log_level:
        cfg = replace(cfg, log_level=log_level)
    return cfg


def _apply_file(cfg: Config, path: Path) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"config file {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FerryError("E_INVALIDARG", f"config file {path}: {exc}") from None
    sections = {"daemon", "limits", "kerberos", "proxy", "store", "bandwidth", "network"}
    unknown = set(data) - sections
    if unknown:
        raise FerryError("E_INVALIDARG", f"config file {path}: unknown sections {sorted(unknown)}")
    changes: dict[str, Any] = {}
    daemon: dict[str, Any] = data.get("daemon", {})
    for key, value in daemon.items():
        kind = _DAEMON_KEYS.get(key)
        if kind is None:
            raise FerryError("E_INVALIDARG", f"config file {path}: unknown key daemon.{key}")
        if not _is(value, kind):
            raise FerryError("E_INVALIDARG", f"config file {path}: daemon.{key} has a wrong type")
        if key == "metrics_listen":
            parse_listen(value, f"config file {path}: daemon.metrics_listen")
        elif key in ("socket", "state_dir"):
            value = Path(value)
        elif key == "ca_file":
            value = Path(value)
            if not value.is_file():
                raise FerryError(
                    "ERROR_FILE_NOT_FOUND",
                    f"config file {path}: daemon.ca_file {value} is not a readable file",
                )
        elif key == "stall_timeout" and value <= 0:
            raise FerryError(
                "E_INVALIDARG", f"config file {path}: daemon.stall_timeout must be > 0"
            )
        elif key == "upload_fragment_size" and value < 5 * 1024:
            raise FerryError(
                "E_INVALIDARG", f"config file {path}: daemon.upload_fragment_size must be >= 5120"
            )
        elif key == "admin_groups":
            value = frozenset(_gid(v) for v in value)
        elif key != "log_level" and value < 0:
            raise FerryError("E_INVALIDARG", f"config file {path}: daemon.{key} < 0")
        elif key in ("notify_timeout", "notify_max_attempts") and value <= 0:
            raise FerryError("E_INVALIDARG", f"config file {path}: daemon.{key} must be > 0")
        changes[key] = value
    limit_names = {f.name for f in fields(Limits)}
    limits: dict[str, int] = {}
    limit_values: dict[str, Any] = data.get("limits", {})
    for key, value in limit_values.items():
        if key not in limit_names:
            raise FerryError("E_INVALIDARG", f"config file {path}: unknown key limits.{key}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FerryError("E_INVALIDARG", f"config file {path}: limits.{key} must be >= 1")
        limits[key] = value
    if limits:
        changes["limits"] = replace(cfg.limits, **limits)
    if "kerberos" in data:
        changes["keytabs"] = _keytabs(data["kerberos"], path)
    changes.update(_proxy_section(path, data.get("proxy", {})))
    changes.update(_store_section(path, data.get("store", {})))
    changes.update(_network_sections(data, path))
    return replace(cfg, **changes)


def _keytabs(section: Any, path: Path) -> dict[int, str]:
    """``[kerberos] keytabs = {"UID" = "/absolute/path"}``."""
    if not isinstance(section, dict) or set(section) - {"keytabs"}:
        raise FerryError("E_INVALIDARG", f"config file {path}: [kerberos] takes only keytabs")
    out: dict[int, str] = {}
    for uid, keytab in dict(section.get("keytabs", {})).items():
        if not str(uid).isdigit() or not isinstance(keytab, str) or not keytab.startswith("/"):
            raise FerryError(
                "E_INVALIDARG",
                f"config file {path}: kerberos.keytabs needs \"UID\" = \"/absolute/path\"",
            )
        out[int(uid)] = keytab.removeprefix("FILE:")
    return out


def _proxy_section(path: Path, section: Any) -> dict[str, Any]:
    """``[proxy]``: ``http``, ``https`` (proxy URLs), ``no_proxy`` (a string separated by
    commas, or a list), ``pac_url`` (http(s):// or file:// URL of a PAC script), ``wpad``
    (look for a PAC script by WPAD when there is no ``pac_url``; default false)."""
    if not isinstance(section, dict):
        raise FerryError("E_INVALIDARG", f"config file {path}: [proxy] must be a table")
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key in ("http", "https", "pac_url"):
            if not isinstance(value, str):
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: proxy.{key} must be a string"
                )
            out["proxy_" + key] = value or None
        elif key == "wpad":
            if not isinstance(value, bool):
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: proxy.wpad must be a boolean"
                )
            out["proxy_wpad"] = value
        elif key == "no_proxy":
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: proxy.no_proxy must be a string or a list"
                )
            out["proxy_no_proxy"] = tuple(value)
        else:
            raise FerryError("E_INVALIDARG", f"config file {path}: unknown key proxy.{key}")
    return out


def _store_section(path: Path, store: Any) -> dict[str, Any]:
    """``[store]``: url (postgresql://… for fleet mode), lease_seconds, worker_id."""
    if not isinstance(store, dict):
        raise FerryError("E_INVALIDARG", f"config file {path}: [store] must be a table")
    out: dict[str, Any] = {}
    for key, value in store.items():
        if key == "url":
            if not isinstance(value, str) or not value.startswith(
                ("postgresql://", "postgres://")
            ):
                raise FerryError(
                    "E_INVALIDARG",
                    f"config file {path}: store.url must be a postgresql:// URL "
                    "(leave it out for the embedded SQLite store)",
                )
            out["store_url"] = value
        elif key == "lease_seconds":
            if not _is(value, (int, float)) or not 1 <= value <= 3600:
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: store.lease_seconds must be 1..3600"
                )
            out["lease_seconds"] = float(value)
        elif key == "worker_id":
            if not isinstance(value, str) or not 0 < len(value) <= 200 or "\t" in value:
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: store.worker_id must be a short name"
                )
            out["worker_id"] = value
        elif key == "credentials_key":
            if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
                raise FerryError(
                    "E_INVALIDARG",
                    f"config file {path}: store.credentials_key must be an absolute path",
                )
            out["credentials_key"] = Path(value)
        else:
            raise FerryError("E_INVALIDARG", f"config file {path}: unknown key store.{key}")
    return out


def _network_sections(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``[bandwidth]`` and ``[network]`` (SPEC §10); an invalid value names the key and why."""
    changes: dict[str, Any] = {}
    if "bandwidth" in data:
        try:
            changes["bandwidth"] = parse_bandwidth(data["bandwidth"])
        except ValueError as exc:
            raise FerryError("E_INVALIDARG", f"config file {path}: {exc}") from None
    network: Any = data.get("network", {})
    if not isinstance(network, dict):
        raise FerryError("E_INVALIDARG", f"config file {path}: network must be a table")
    for key, value in network.items():
        if key == "cost":
            if value not in COST_CHOICES:
                raise FerryError(
                    "E_INVALIDARG",
                    f"config file {path}: network.cost must be one of {', '.join(COST_CHOICES)}, "
                    f"not {value!r}",
                )
            changes["network_cost"] = value
        elif key == "dbus_address":
            if not isinstance(value, str) or not value:
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: network.dbus_address must be a string"
                )
            changes["dbus_address"] = value
        elif key == "netlink":
            if not isinstance(value, bool):
                raise FerryError(
                    "E_INVALIDARG", f"config file {path}: network.netlink must be true or false"
                )
            changes["netlink"] = value
        else:
            raise FerryError("E_INVALIDARG", f"config file {path}: unknown key network.{key}")
    return changes
def parse_listen(value: str, what: str = "metrics_listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); E_INVALIDARG otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FerryError("E_INVALIDARG", f"{what}: {value!r} is not HOST:PORT")
    return host, int(port)
