"""``openeas coldstart <svc>``: p50/p90 of each cold-start phase over the service's recent
starts, the last few starts, and the lead the cron pre-scaling uses (docs/cold-start.md)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from openeas.cli import render

PHASES = ("pull_s", "fetch_s", "prepare_s", "start_s", "warm_s", "total_s")


def _s(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def stats_table(view: dict[str, Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("PHASE", "P50 s", "P90 s", "STARTS"):
        table.add_column(col, justify="left" if col == "PHASE" else "right")
    for span in PHASES:
        st = view["phases"].get(span) or {}
        table.add_row(span.removesuffix("_s"), _s(st.get("p50")), _s(st.get("p90")), str(st.get("n", 0)))
    return table


def recent_table(view: dict[str, Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("REPLICA", "VERSION", "READY AT", "PULL", "FETCH", "START", "WARM", "TOTAL s"):
        table.add_column(col, justify="right" if col.endswith(" s") else "left")
    for r in view["recent"]:
        pull = r.get("pull") or {}
        fetch = r.get("fetch") or {}
        pull_how = "" if not pull else (" cached" if pull.get("cached") else " pulled")
        fetch_how = "" if not fetch else (" hit" if fetch.get("cache_hit") else " miss")
        table.add_row(
            str(r.get("replica")), str(r.get("version")), render.clock(r.get("at")),
            _s(r.get("pull_s")) + pull_how, _s(r.get("fetch_s")) + fetch_how,
            _s(r.get("start_s")), _s(r.get("warm_s")), _s(r.get("total_s")),
        )  # fmt: skip
    return table


def prescale_line(p: dict[str, Any]) -> str:
    """``cron pre-scaling: lead 13.4 s (p90 cold start + 1 s margin; p90 12.4 s), 2 rules``."""
    if not p.get("used", False) and "lead_s" not in p:
        return f"cron pre-scaling: not used ({p.get('reason', 'no autoscaling policy')})"
    p90 = p.get("cold_start_p90_s")
    measured = f"; autoscaler's p90 cold start {_s(p90)} s" if p90 is not None else ""
    rules = f"{p['rules']} cron rule{'s' if p['rules'] != 1 else ''}" if p.get("rules") else "no cron rule"
    return f"cron pre-scaling: lead {_s(p['lead_s'])} s ({p['source']}{measured}), {rules}"


def show(view: dict[str, Any]) -> None:
    render.out.print(
        f"{view['name']}: {view['starts']} recent starts (window {view['window']})", highlight=False
    )
    if view["starts"]:
        render.out.print(stats_table(view))
        render.out.print("\nlast starts:", highlight=False)
        render.out.print(recent_table(view))
    render.out.print(prescale_line(view["prescale"]), highlight=False, soft_wrap=True)

