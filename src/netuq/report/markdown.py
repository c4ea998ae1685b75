"""Render the report model to Markdown (CommonMark + GitHub tables), figures linked as files.

Every string of the model is escaped here: ASCII punctuation that Markdown or inline HTML could
interpret (``\\ ` * _ [ ] < > # | ~ &`` anywhere; ``- + =`` and ``1.`` at the start of a block) gets
a backslash, and line breaks become spaces, so a method label or config value from the results
shows as the text it is, as in HTML. (``( ) !`` only act next to ``[ ]``, which are escaped.)
"""

from __future__ import annotations

import re
from collections.abc import Container

from .model import Bullets, Figure, Paragraph, Report, Strong, Table

__all__ = ["render_markdown", "escape", "anchor"]

_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")
_LEADING = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")


def escape(text: str) -> str:
    r"""``text`` as literal Markdown text (no markup, no HTML, one line).

    Example:
        >>> print(escape("<b>a|b</b> *x*"))
        \<b\>a\|b\</b\> \*x\*
    """
    return _SPECIAL.sub(r"\\\1", re.sub(r"[\r\n]+", " ", str(text)))


def anchor(title: str) -> str:
    """The anchor GitHub and most Markdown viewers give a heading: ``"Per class"`` -> ``"per-class"``.

    Example:
        >>> anchor("Out-of-distribution detection"), anchor("How to read this report")
        ('out-of-distribution-detection', 'how-to-read-this-report')
    """
    return re.sub(r"[^\w\- ]", "", str(title).strip().lower()).replace(" ", "-")


def _lead(text: str) -> str:
    """Escape what would start a list, heading underline or numbered list at a block's start."""
    m = _LEADING.match(text)
    if not m:
        return text
    if m.group(2)[0].isdigit():
        end = m.end()
        return text[:end] + "\\" + text[end:]
    return text[: m.start(2)] + "\\" + text[m.start(2):]


def _inline(parts) -> str:
    return _lead("".join(f"**{escape(p.text)}**" if isinstance(p, Strong) else escape(p) for p in parts))


def _table(t: Table) -> list[str]:
    def cell(i: int, j: int, v: str) -> str:
        v = escape(v)
        return f"**{v}**" if v and t.is_best(i, j) else v

    lines = ["| " + " | ".join(escape(h) for h in t.header) + " |", "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(cell(i, j, v) for j, v in enumerate(row)) + " |" for i, row in enumerate(t.shown())]
    return lines


def _block(b, figures: Container[str] | None) -> list[str]:
    if isinstance(b, Paragraph):
        text = _inline(b.parts)
        return [f"*{text}*" if b.style == "meta" else text]
    if isinstance(b, Bullets):
        return [f"- {_inline(i)}" for i in b.items]
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        if figures is None or (b.file not in figures and f"figures/{b.file}" not in figures):
            return []
        # The file name comes from figures.slug (safe characters only); the caption is escaped.
        return [f"![{escape(b.alt_text)}](figures/{b.file})", "", f"*{escape(b.caption)}*"]
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_markdown(report: Report, figures: Container[str] | None = None) -> str:
    """report.md text; figures are linked as ``figures/FILE`` when ``FILE`` is in ``figures``
    (``None``: no figure links, e.g. when no PNGs were written).

    Example:
        >>> from netuq.report.model import Report, Section, Paragraph
        >>> print(render_markdown(Report("t", sections=[Section("s", "A", [Paragraph("x <y>")])])))
        # t
        <BLANKLINE>
        ## A
        <BLANKLINE>
        x \\<y\\>
        <BLANKLINE>
    """
    out = [f"# {escape(report.title)}"]
    for b in report.header:
        out += ["", *_block(b, figures)]
    if len(report.sections) > 1:
        out += ["", "**Contents**", ""]
        out += [f"{i}. [{escape(sec.title)}](#{anchor(sec.title)})" for i, sec in enumerate(report.sections, 1)]
    for sec in report.sections:
        out += ["", f"## {escape(sec.title)}"]
        for b in sec.blocks:
            lines = _block(b, figures)
            if lines:
                out += ["", *lines]
    return "\n".join(out) + "\n"
