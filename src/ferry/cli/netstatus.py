"""``ferry network`` and ``ferry reload`` (SPEC §10): what ferryd sees of the network and the
bandwidth policy in force; setting the network cost and re-reading the config are for
administrators (and a user daemon's own user). ``main`` adds these commands to ``ferry``."""

from __future__ import annotations

from typing import Any

import click

from ..model.network import COST_CHOICES
from .context import current as _ctx


def _rate(value: Any) -> str:
    if value is None:
        return "none"
    value = float(value)
    for unit, scale in (("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B/s"


def _show(doc: dict[str, Any]) -> None:
    nm = doc.get("networkmanager") or {}
    bw = doc.get("bandwidth") or {}
    lines = [
        ("Network cost", f"{doc.get('cost')} (from {doc.get('cost_source')})"),
        ("Configured cost", str(doc.get("configured_cost"))),
        ("NetworkManager", f"{nm.get('status')}; cost {nm.get('cost') or '-'}"),
    ]
    routes = doc.get("routes")
    if isinstance(routes, dict):
        lines.append(("Routes", str(routes.get("status"))))
    lines.append(("Schedule period", str(bw.get("period"))))
    lines.append(("Background limit", _rate(bw.get("background_limit"))))
    limits = bw.get("priority_limits") or {}
    lines.append(
        ("Priority limits", ", ".join(f"{p} {_rate(r)}" for p, r in limits.items()) or "none")
    )
    yields = {p: r for p, r in (bw.get("yield_limits") or {}).items() if r is not None}
    if yields:
        text = ", ".join(f"{p} {_rate(r)}" for p, r in yields.items())
        lines.append(("Yielding to others", text))
    measured = bw.get("measured") or {}
    lines.append(
        ("Measured use", ", ".join(f"{p} {_rate(r)}" for p, r in measured.items() if r) or "idle")
    )
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {value}")


@click.command()
@click.option(
    "--cost",
    type=click.Choice(COST_CHOICES, case_sensitive=False),
    help="Set the network cost ferryd assumes (administrators): unrestricted, metered, "
    "roaming; auto goes back to NetworkManager or the config.",
)
def network(cost: str | None) -> None:
    """Show what ferryd sees of the network: the network cost and where it comes from, the
    bandwidth limits in force (schedule period, background and per-priority limits) and the
    measured use per priority. Jobs whose cost flags forbid the current cost wait QUEUED
    (BG_E_BLOCKED_BY_COST_TRANSFER_POLICY)."""
    c = _ctx()
    client = c.client()
    doc = client.set_network_cost(cost.lower()) if cost else client.network()
    c.emit(doc, lambda: _show(doc))


@click.command()
def reload() -> None:
    """Re-read ferryd's config file and apply its [bandwidth] and [network] cost settings at
    once, as SIGHUP does (administrators; a user daemon's own user). An invalid file is
    refused with the key and why, and nothing changes."""
    c = _ctx()
    doc = c.client().reload()
    c.emit(doc, lambda: click.echo(f"reloaded {doc.get('config_file') or '(no config file)'}"))
