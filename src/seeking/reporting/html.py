"""Pieces of one self-contained HTML page: pictures are embedded as data URIs, the style is inline,
and nothing refers to a file or a site, so the page can be mailed or archived on its own."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: .6em 0; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; font-size: 12px; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: .4em .8em; }
"""


def text(value: object) -> str:
    return html.escape(str(value))


def heading(level: int, title: str) -> str:
    return f"<h{level}>{text(title)}</h{level}>"


def paragraph(content: str, note: bool = False) -> str:
    return f'<p class="note">{text(content)}</p>' if note else f"<p>{text(content)}</p>"


def preformatted(content: str) -> str:
    return f"<pre>{text(content)}</pre>"


def details(summary: str, content: str) -> str:
    """A folded section (``content`` is HTML)."""
    return f"<details><summary>{text(summary)}</summary>{content}</details>"


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{text(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{text(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{text(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, parts: Sequence[str]) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{text(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
