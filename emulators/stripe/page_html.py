"""HTML helpers of the emulator's read-only page (``page.py``, ``page_billing.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape
from typing import Any

Name = Callable[[str], str]  # an id -> its HTML label


def e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def code(value: Any) -> str:
    return f"<code>{e(value)}</code>" if value else ""


def table(headers: Iterable[str], rows: list[list[str]], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def td(html: str, cls: str = "") -> str:
    return f'<td class="{cls}">{html}</td>' if cls else f"<td>{html}</td>"


def status(value: Any) -> str:
    return f'<span class="status-{e(value)}">{e(value)}</span>'
