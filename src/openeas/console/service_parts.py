"""Parts of the Service page: the versions (a diff between any two, rollback behind a "yes, …"
box), the tail of a replica's log (bounded, escaped, followed live) and the call snippets (OpenAI
SDK, curl, EAS SDK; the token only once revealed). Every value goes through ``esc``."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from openeas.console.html import csrf_field, esc

LOG_LINES = 100
"""Last lines of a replica's log the page shows."""
LOG_LINE_CHARS = 500
"""Characters of one log line the page shows; the rest is cut (marked with …)."""
LOG_POLL_S = 1.0
"""Seconds between two reads of the shown log for the page's live stream."""


def _q(name: str) -> str:
    return esc(urllib.parse.quote(name))


def rollback_form(name: str, version: int, csrf: str) -> str:
    return (
        f'<form method="post" action="/console/services/{_q(name)}/action" class="action">'
        f'{csrf_field(csrf)}<input type="hidden" name="action" value="rollback">'
        f'<input type="hidden" name="version" value="{esc(version)}">'
        f'<label><input type="checkbox" name="confirm" value="yes" required> yes, roll {esc(name)} '
        f'back to v{esc(version)}</label><button type="submit">Roll back to v{esc(version)}</button></form>'
    )


def diff_html(lines: Sequence[str]) -> str:
    """A unified diff, each line marked as added, removed or a hunk header (red, green: the CSS)."""
    if not lines:
        return '<p id="diff">The two versions have the same spec.</p>'
    out = []
    for line in lines:
        kind = "hunk" if line.startswith("@@") else {"+": "add", "-": "del"}.get(line[:1], "same")
        if line.startswith(("+++", "---")):
            kind = "file"
        out.append(f'<span class="d-{kind}">{esc(line)}</span>')
    return f'<pre id="diff" class="diff">{"".join(out)}</pre>'  # each line a block (the CSS)


def _select(field: str, label: str, versions: Sequence[int], chosen: int | None) -> str:
    opts = "".join(f'<option value="{v}"{" selected" if v == chosen else ""}>v{v}</option>' for v in versions)
    return f'<label for="{field}">{esc(label)}</label><select id="{field}" name="{field}">{opts}</select>'


def versions_html(
    name: str,
    versions: Sequence[Mapping[str, Any]],
    csrf: str,
    pick: tuple[int, int] | None = None,
    diff: Sequence[str] | None = None,
) -> str:
    """The versions list (rollback on each but the current), the compare form (a GET: reading
    needs no CSRF token) and, when two were picked, their diff."""
    items = "".join(
        f"<li>v{esc(v['version'])} {esc(v['created_at'])}"
        + (" (current)" if v["current"] else rollback_form(name, int(v["version"]), csrf))
        + "</li>"
        for v in versions
    )
    numbers = [int(v["version"]) for v in versions]
    html = f'<ul id="versions">{items}</ul>'
    if len(numbers) >= 2:
        a, b = pick or (numbers[-2], numbers[-1])
        html += (
            f'<form method="get" action="/console/services/{_q(name)}#diff" class="action" id="compare">'
            + _select("diff_from", "From", numbers, a)
            + _select("diff_to", "to", numbers, b)
            + '<button type="submit">Compare</button></form>'
        )
    if diff is not None and pick is not None:
        html += f"<h3>v{esc(pick[0])} → v{esc(pick[1])}</h3>{diff_html(diff)}"
    return html


def bounded_log(text: str) -> str:
    """The last ``LOG_LINES`` lines of ``text``, each cut at ``LOG_LINE_CHARS`` (not escaped)."""
    lines = text.splitlines()[-LOG_LINES:]
    return "\n".join(x if len(x) <= LOG_LINE_CHARS else x[:LOG_LINE_CHARS] + "…" for x in lines)


def log_fragment(text: str | None) -> dict[str, str]:
    """The live part of the log section: the bounded tail, escaped."""
    if text is None:
        return {"log": "no replica to show"}
    return {"log": esc(bounded_log(text)) or "(empty)"}


def log_html(name: str, replicas: Sequence[str], chosen: str | None, text: str | None) -> str:
    """Which replica's log (a GET form) and its tail, which the live stream replaces."""
    pick = ""
    if len(replicas) > 1:
        opts = "".join(
            f'<option value="{esc(r)}"{" selected" if r == chosen else ""}>{esc(r)}</option>'
            for r in replicas
        )
        pick = (
            f'<form method="get" action="/console/services/{_q(name)}#log" class="action">'
            f'<label for="replica">Replica</label><select id="replica" name="replica">{opts}</select>'
            '<button type="submit">Show</button></form>'
        )
    caption = f"last {LOG_LINES} lines of {chosen}, live" if chosen else "no replica"
    return (
        f'{pick}<p class="muted">{esc(caption)}</p>'
        f'<pre id="log" class="log" tabindex="0" aria-label="{esc(caption)}">'
        f'{log_fragment(text)["log"]}</pre>'
    )


def gateway_base(endpoint: str, name: str) -> str:
    """The gateway's URL from a service's endpoint (``…/api/predict/<name>``), for the EAS SDK."""
    return endpoint.removesuffix(f"/api/predict/{name}")


def snippets_html(name: str, endpoint: str, token: str | None) -> str:
    """How to call the service: OpenAI SDK, curl and EAS SDK, with the token once revealed."""
    tok = token or "<token>"
    examples = (
        (
            "OpenAI SDK (OpenAI-compatible servers)",
            "from openai import OpenAI\n"
            f'client = OpenAI(base_url="{endpoint}/v1", api_key="{tok}")\n'
            "print(client.models.list())",
        ),
        ("curl", f"curl -H 'Authorization: {tok}' {endpoint} -d '{{}}'"),
        (
            "EAS SDK (eas_prediction)",
            "from eas_prediction import PredictClient, StringRequest\n"
            f'client = PredictClient("{gateway_base(endpoint, name)}", "{name}")\n'
            f'client.set_token("{tok}")\nclient.init()\n'
            "print(client.predict(StringRequest('{}')))",
        ),
    )
    return "".join(
        f'<figure class="snippet"><figcaption>{esc(title)}</figcaption><pre>{esc(code)}</pre></figure>'
        for title, code in examples
    )
