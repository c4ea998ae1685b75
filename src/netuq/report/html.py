"""Render the report model to one self-contained HTML page (figures inlined as PNG data URIs).

Every string of the model is HTML-escaped here; the only markup is the page's own. The page has a
table of contents and sortable tables: a small inline script (no external script, no network)
sorts a table when a header cell is clicked; without JavaScript the page reads the same, unsorted.
Wide tables scroll inside their own box, so the page itself never scrolls sideways.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

from .model import Bullets, Figure, Paragraph, Report, Strong, Table

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;
padding-bottom:.2em}.meta{color:#666;font-size:.9em}.note{background:#fff4e5;border-left:4px solid #f0883e;
padding:.4em 1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{padding:.25em .7em;text-align:right;
border-bottom:1px solid #eee}th{background:#f4f4f4;text-align:center}td:first-child,td:nth-child(2){text-align:left}
tr.group td{border-top:1px solid #bbb}td.best{background:#e3f4e1}
.summary{background:#f6f8fa;border-left:4px solid #2f81f7;padding:.6em 1em .6em 2em}.summary li{margin:.2em 0}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555;max-width:60em}.howto{font-size:.92em;color:#333}
.kv td{text-align:left}td.l,th.l{text-align:left}.scroll{overflow-x:auto;max-width:100%}
nav.toc{background:#fafafa;border:1px solid #e5e5e5;padding:.3em 1em;display:inline-block}
nav.toc ol{margin:.2em 0;padding-left:1.4em}.toc-title{font-weight:600;margin:.3em 0}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e8eef7}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
"""

# Sorts a table.sortable by the clicked column: numbers by value (the first number in the cell;
# "—" last), other text alphabetically; a second click reverses. Rows grouped under a method
# (its name left blank below the first row) get the name back once sorted.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.setAttribute("tabindex", "0");
    function sort() {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      rows.forEach(function (r) {
        r.classList.remove("group");
        Array.prototype.forEach.call(r.cells, function (c) {
          if (c.hasAttribute("data-full")) { c.textContent = c.getAttribute("data-full"); }
        });
      });
      function key(r) {
        var t = r.cells[col] ? r.cells[col].textContent.trim() : "";
        var m = t.match(/^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?/i);
        return m ? parseFloat(m[0]) : t;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = typeof x === "number", ny = typeof y === "number";
        if (nx && ny) { return asc ? x - y : y - x; }
        if (nx !== ny) { return nx ? -1 : 1; }
        return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
"""

_e = html.escape


def _inline(parts) -> str:
    return "".join(f"<b>{_e(p.text)}</b>" if isinstance(p, Strong) else _e(p) for p in parts)


def _cls(style: str) -> str:
    return f' class="{_e(style)}"' if style else ""


_NUMBER = re.compile(r"^[-+]?(\d|\.\d)|^—$")


def _text_columns(t: Table) -> set[int]:
    """Columns holding text rather than numbers (left-aligned)."""
    return {j for j in range(len(t.header)) if any(r[j] and not _NUMBER.match(r[j]) for r in t.rows)}


def _table(t: Table) -> str:
    sortable = t.style != "kv" and len(t.rows) > 1
    cls = " ".join(c for c in (t.style, "sortable" if sortable else "") if c)
    title = ' title="click a header to sort"' if sortable else ""
    text = _text_columns(t)
    out = ['<div class="scroll">', f"<table{_cls(cls)}{title}>",
           "<thead><tr>" + "".join(f'<th scope="col"{_cls("l" if j in text else "")}>{_e(h)}</th>'
                                   for j, h in enumerate(t.header)) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(t.shown()):
        cells = []
        for j, cell in enumerate(row):
            full = t.rows[i][j]
            attr = f' data-full="{_e(full)}"' if cell != full else ""
            if j in text:
                attr += ' class="l"' if not t.is_best(i, j) else ""
            if t.is_best(i, j):
                cells.append(f'<td class="best{" l" if j in text else ""}"{attr}><strong>{_e(cell)}</strong></td>')
            else:
                cells.append(f"<td{attr}>{_e(cell)}</td>")
        tr = '<tr class="group">' if t.starts_group(i) else "<tr>"
        out.append(tr + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _figure(f: Figure, images: Mapping[str, bytes]) -> str:
    data = images.get(f.file)
    if data is None:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{_e(f.alt_text)}"><figcaption>{_e(f.caption)}</figcaption>'
            "</figure>")


def _block(b, images: Mapping[str, bytes]) -> str:
    if isinstance(b, Paragraph):
        return f"<p{_cls(b.style)}>{_inline(b.parts)}</p>"
    if isinstance(b, Bullets):
        items = "".join(f"<li>{_inline(i)}</li>" for i in b.items)
        if b.style:
            return f'<div class="{_e(b.style)}"><ul>{items}</ul></div>'
        return f"<ul>{items}</ul>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return _figure(b, images)
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_html(report: Report, images: Mapping[str, bytes] | None = None) -> str:
    """The page: ``images`` maps a figure's file name to its PNG bytes (figures without are left out).

    Example:
        >>> from netuq.report.model import Report, Section, Paragraph
        >>> page = render_html(Report("t <1>", sections=[Section("s", "A & B", [Paragraph("x")])]))
        >>> "<h2 id=\\"s\\">A &amp; B</h2>" in page, "<title>t &lt;1&gt;</title>" in page
        (True, True)
    """
    images = images or {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(report.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(report.title)}</h1>"]
    parts += [_block(b, images) for b in report.header]
    if len(report.sections) > 1:
        parts.append('<nav class="toc" aria-label="contents"><p class="toc-title">Contents</p><ol>'
                     + "".join(f'<li><a href="#{_e(sec.id)}">{_e(sec.title)}</a></li>' for sec in report.sections)
                     + "</ol></nav>")
    for sec in report.sections:
        parts.append(f'<h2 id="{_e(sec.id)}">{_e(sec.title)}</h2>')
        parts += [h for h in (_block(b, images) for b in sec.blocks) if h]
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)
