"""``ferry fleet`` (administrators): the workers sharing a PostgreSQL queue, their last
heartbeat, and the job leases they hold (docs/fleet.md)."""

from __future__ import annotations

from typing import Any

import click

from .context import current as _ctx


@click.command()
@click.option("--leases/--no-leases", default=True, help="List every job lease too.")
def fleet(leases: bool) -> None:
    """Fleet mode: the workers, their heartbeats and leases (administrators)."""
    c = _ctx()
    doc = c.client().fleet()

    def text() -> None:
        click.echo(f"this worker: {doc['worker']} (lease {doc['lease_seconds']:g} s)")
        workers: list[dict[str, Any]] = doc.get("workers", [])
        click.echo(f"{'WORKER':<32} {'HOST':<20} {'PID':>7} {'HEARTBEAT':>10} {'LEASES':>6}")
        for w in workers:
            state = f"{w['heartbeat_age']:.1f}s ago" if w["alive"] else "DEAD"
            mark = "*" if w.get("self") else " "
            click.echo(
                f"{mark}{w['id']:<31} {w['host']:<20} {w['pid']:>7} {state:>10} {w['leases']:>6}"
            )
        if leases:
            rows: list[dict[str, Any]] = doc.get("leases", [])
            click.echo(f"\n{'JOB':<38} {'WORKER':<32} {'EPOCH':>5} {'EXPIRES IN':>10} STATE")
            for lease in rows:
                left = lease.get("expires_in")
                left_text = "-" if left is None else f"{left:.1f}s"
                click.echo(
                    f"{lease['job_id']:<38} {lease['worker']:<32} {lease['epoch']:>5} "
                    f"{left_text:>10} {lease['state']}"
                )

    c.emit(doc, text)
