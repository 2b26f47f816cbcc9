"""Self-contained HTML: the building blocks of the reports.

A report is one file that opens anywhere, offline, and prints: images are embedded as
``data:image/png;base64`` URIs, the style sheet is inline (with ``@media print`` rules
that keep figures and tables whole on a page), and nothing needs JavaScript or any
external resource. Every piece of text that comes from data (ids, file names, table
cells, messages) goes through `esc` (`html.escape`); the builders here return markup
and take text, so a caller never pastes unescaped text into a page.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "CSS",
    "esc",
    "png_data_uri",
    "img",
    "figure",
    "not_available",
    "table",
    "key_values",
    "section",
    "page",
    "parse_markdown_table",
    "markdown_table",
    "pre",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
:root { --ink: #1d2530; --muted: #5f6b7a; --rule: #d5dbe3; --accent: #1f4e79;
        --high: #c0392b; --low: #2471a3; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1180px; padding: 24px 32px; line-height: 1.4;
       font-size: 14px; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 4px; color: var(--accent); }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px;
     border-bottom: 2px solid var(--rule); color: var(--accent); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta, .muted { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 12.5px; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 4px; }
th, td { border: 1px solid var(--rule); padding: 3px 8px; text-align: left;
         vertical-align: top; }
th { background: #eef2f7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 10px 0; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { font-size: 12px; color: var(--muted); max-width: 640px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.grid > * { flex: 1 1 420px; }
.na { color: var(--muted); font-style: italic; background: #f6f7f9;
      border-left: 3px solid var(--rule); padding: 6px 10px; }
.notes { font-size: 12px; color: var(--muted); margin: 4px 0 0 0; padding-left: 18px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; color: #ffffff;
         font-weight: bold; font-size: 13px; }
.badge.high { background: var(--high); }
.badge.low { background: var(--low); }
.badge.none { background: var(--muted); }
.kv th { width: 220px; }
pre { background: #f6f7f9; border: 1px solid var(--rule); padding: 8px; font-size: 11.5px;
      white-space: pre-wrap; word-break: break-word; max-height: 420px; overflow: auto; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  figure, table, .keep { break-inside: avoid; page-break-inside: avoid; }
  figure img { max-height: 24cm; }
  pre { max-height: none; overflow: visible; }
  .grid { display: block; }
  a { color: inherit; text-decoration: none; }
}
@page { size: A4; margin: 14mm; }
"""


def esc(text: Any) -> str:
    """Text made safe for HTML content and attribute values (`html.escape`)."""
    return html.escape(str(text), quote=True)


def png_data_uri(png: bytes | str | Path) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes or a PNG file.

    Raises
    ------
    ValueError
        The bytes are not a PNG (the signature is checked, so that a report never embeds
        something a browser cannot show).
    """
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{png if not isinstance(png, bytes) else 'bytes'}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(png: bytes | str | Path, alt: str, width: int | None = None) -> str:
    """An ``<img>`` with the PNG embedded (``alt`` escaped)."""
    w = f' style="width:{int(width)}px"' if width else ""
    return f'<img src="{png_data_uri(png)}" alt="{esc(alt)}"{w}>'


def figure(png: bytes | str | Path, caption: str, width: int | None = None) -> str:
    """A ``<figure>`` with an embedded PNG and an escaped caption."""
    return f"<figure>{img(png, caption, width)}<figcaption>{esc(caption)}</figcaption></figure>"


def not_available(what: str, hint: str) -> str:
    """The line a section shows when its inputs are missing: "not available: run ..."."""
    return f'<p class="na">{esc(what)} not available: {esc(hint)}</p>'


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return bool(re.fullmatch(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?", str(value).strip()))


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(
    data: pd.DataFrame | Sequence[Sequence[Any]],
    columns: Sequence[str] | None = None,
    caption: str | None = None,
    index: bool = False,
    digits: int = 3,
) -> str:
    """An HTML table of a DataFrame or of rows; every cell escaped.

    Parameters
    ----------
    data : DataFrame or sequence of rows
    columns : sequence of str, optional
        Header (default the DataFrame's columns).
    caption : str, optional
    index : bool, default False
        Show a DataFrame's index as the first column.
    digits : int, default 3
        Decimals of float cells (NaN shown empty).
    """
    if isinstance(data, pd.DataFrame):
        df = data.reset_index() if index else data
        header = list(columns) if columns is not None else [str(c) for c in df.columns]
        rows: Iterable[Sequence[Any]] = df.itertuples(index=False, name=None)
    else:
        header = list(columns or [])
        rows = data
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    if header:
        parts.append(
            "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
        )
    parts.append("<tbody>")
    for row in rows:
        cells = []
        for v in row:
            text = _cell(v, digits)
            cls = ' class="num"' if text and _is_number(v) else ""
            cells.append(f"<td{cls}>{esc(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def key_values(items: Mapping[str, Any], caption: str | None = None) -> str:
    """A two-column table of labels and values (escaped)."""
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_cell(v, 3))}</td></tr>" for k, v in items.items()
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="kv">{cap}<tbody>{rows}</tbody></table>'


def pre(text: str) -> str:
    """Preformatted text (escaped), e.g. a configuration file."""
    return f"<pre>{esc(text)}</pre>"


def section(title: str, body: str, anchor: str | None = None) -> str:
    """A ``<section>`` with an escaped ``<h2>`` title and ``body`` markup."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>"


def page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    """A whole HTML document: inline CSS, the escaped title, the sections' markup."""
    sub = f'<p class="meta">{esc(subtitle)}</p>' if subtitle else ""
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1>{sub}</header>\n{body}\n</body>\n</html>\n"
    )


def parse_markdown_table(text: str) -> tuple[str, list[str], list[list[str]], list[str]]:
    """Split a markdown table as `lamp.evaluation.tables.to_markdown` writes it.

    Returns
    -------
    (title, header, rows, notes)
        ``title`` from a ``**bold**`` line (or ""), the header cells, the body rows
        (cells stripped), and the ``- `` list items after the table.

    Raises
    ------
    ValueError
        No pipe table in the text.
    """
    title, header, rows, notes = "", [], [], []
    table_lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            table_lines.append(s)
        elif s.startswith("**") and s.endswith("**") and not title:
            title = s.strip("*").strip()
        elif s.startswith("- "):
            notes.append(s[2:].strip())
    if len(table_lines) < 2:
        raise ValueError("no markdown table (a header line, a separator line and rows)")

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(table_lines[0])
    for line in table_lines[1:]:
        if re.fullmatch(r"\|?[\s:|-]+\|?", line):
            continue  # the separator line
        rows.append(cells(line))
    return title, header, rows, notes


def markdown_table(text: str) -> str:
    """HTML for a markdown table file (title as caption, list items as notes below)."""
    title, header, rows, notes = parse_markdown_table(text)
    out = table(rows, header, caption=title or None)
    if notes:
        out += '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
    return out
