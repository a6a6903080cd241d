"""``openeas eval <svc|group.member> --set golden.jsonl``: run an eval set on the target's
direct endpoint (in the server, which stores the run) and print pass rate, failures, latency.
The file is parsed here first: a malformed one is an error naming each bad line, nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from openeas.cli import render
from openeas.cli.common import DataDir, JsonOut, cli_errors
from openeas.cli.common import client as _client
from openeas.cli.evalfile import read_eval_set


def eval_text(rep: dict[str, Any]) -> str:
    lat = rep.get("latency_ms") or {}
    lines = [
        f"{rep['target']}: {rep['passed']}/{rep['cases']} passed ({rep['pass_rate']:.1%}), "
        f"latency p50 {lat.get('p50')} ms, p95 {lat.get('p95')} ms (run {rep['id']})"
    ]
    for f in rep.get("failures") or []:
        lines.append(f"  FAIL line {f['line']}: {f['prompt']!r}")
        lines.append(f"       expected {f['expected']}, got {f['got']!r}")
    if "ok" in rep:
        lines.append(f"{'PASS' if rep['ok'] else 'FAIL'}: min pass {rep['min_pass']:.0%}")
    return "\n".join(lines)


@cli_errors
def eval_cmd(
    target: Annotated[str, typer.Argument(help="A service, or group.member (the member's direct endpoint).")],
    eval_set: Annotated[Path, typer.Option("--set", help="The eval set: JSONL, one case a line.")],
    min_pass: Annotated[
        float | None,
        typer.Option("--min-pass", min=0.0, max=1.0, help="Exit 1 when the pass rate is under it (0..1)."),
    ] = None,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Send each case of an eval set to a service's direct endpoint, check the answers against
    their labels, print the pass rate, the failures and latency; the run is stored."""
    text = read_eval_set(eval_set)
    rep = _client(data_dir).run_eval(target, text, min_pass=min_pass)
    if json_out:
        render.print_json(rep)
    else:
        render.out.print(eval_text(rep), highlight=False, markup=False)
    if rep.get("ok") is False:
        raise typer.Exit(1)
