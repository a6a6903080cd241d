"""HTML for the console: every value goes through ``esc`` (or ``attr``); a page is the layout
around a body. No inline script anywhere and no style attribute: the Content-Security-Policy
forbids them. The one stylesheet is inlined in each page's head, allowed by its SHA-256 in the
policy (the page paints without waiting for a second request)."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Sequence
from importlib import resources

STYLESHEET = resources.files("openeas.console").joinpath("static", "console.css").read_text()
"""The console's stylesheet (static/console.css), inlined in every page."""

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLESHEET.encode()).digest()).decode()
"""What the policy allows as inline style: this stylesheet, byte for byte, and nothing else."""

CSP = (
    f"default-src 'none'; script-src 'self'; style-src 'self' '{STYLE_HASH}'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The console's Content-Security-Policy: its own script file only, no inline code, the
inlined stylesheet by its hash, no framing."""

SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def esc(value: object) -> str:
    """``value`` as HTML text (None as an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


def table(head: Sequence[str], rows: Iterable[str], *, tid: str = "", caption: str = "") -> str:
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    ths = "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
    tid_attr = f' id="{esc(tid)}"' if tid else ""
    return f"<table{tid_attr}>{cap}<thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def errors_list(errors: Sequence[str]) -> str:
    if not errors:
        return ""
    items = "".join(f"<li>{esc(e)}</li>" for e in errors)
    return f'<div class="errors" role="alert"><ul id="errors">{items}</ul></div>'


def layout(
    title: str, body: str, *, csrf: str | None = None, live: str | Sequence[str] | None = None
) -> str:
    """A whole page. ``live``: the Server-Sent Events URL(s) the page's script follows."""
    nav = ""
    if csrf is not None:
        nav = (
            '<nav aria-label="Console"><a href="/console/services">Services</a> '
            '<a href="/console/deploy">Deploy</a> <a href="/console/stress">Stress</a> '
            '<a href="/console/async">Async and batch</a>'
            f'<form method="post" action="/console/logout" class="inline">{csrf_field(csrf)}'
            '<button type="submit">Log out</button></form></nav>'
        )
    urls = [live] if isinstance(live, str) else list(live or [])
    meta_live = "".join(f'<meta name="openeas-live" content="{esc(u)}">' for u in urls)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · OpenEAS</title>{meta_live}"
        f"<style>{STYLESHEET}</style>"
        '<script type="module" src="/console/static/console.js"></script></head>'
        f'<body><header><span class="brand">OpenEAS</span>{nav}</header>'
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def sparkline(values: Sequence[float | None], *, label: str, width: int = 240, height: int = 40) -> str:
    """An inline SVG line of ``values`` (None: a gap treated as 0), scaled to its maximum, with
    the latest value written in its corner; "no data yet" until there are two points."""
    pts = [v or 0.0 for v in values][-width:]
    head = (
        f'<svg class="chart" role="img" aria-label="{esc(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    )
    if len(pts) < 2:
        mid = f'x="{width / 2:.0f}" y="{height / 2 + 4:.0f}" text-anchor="middle"'
        return f"{head}<text {mid}>no data yet</text></svg>"
    top = max(pts) or 1.0
    step = width / (len(pts) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(pts)
    )
    last = f"{pts[-1]:.1f}".removesuffix(".0")
    return (
        f'{head}<polyline fill="none" points="{coords}"/>'
        f'<text x="{width - 2}" y="12" text-anchor="end">{esc(last)}</text></svg>'
    )
