"""The format-neutral report: a title, header blocks and sections of paragraphs, lists, tables and
figures. Built once from the results (:func:`netuq.report.build.build_report`) and rendered to
HTML (:mod:`netuq.report.html`) and Markdown (:mod:`netuq.report.markdown`), so both formats show
the same sections, tables and figures.

All text here is plain text taken from the results or written by the report: the renderers
escape every string for their format (nothing in the model is trusted markup).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["Strong", "Paragraph", "Bullets", "Table", "Figure", "Section", "Report", "Block", "Inline"]


@dataclass(frozen=True)
class Strong:
    """Emphasised text inside a paragraph (bold in both formats)."""

    text: str


Inline = Union[str, Strong]


def _parts(parts) -> tuple:
    if isinstance(parts, (str, Strong)):
        return (parts,)
    return tuple(parts)


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text; ``style`` is a hint for HTML (``"meta"``, ``"howto"``, ``"note"``)."""

    parts: tuple[Inline, ...]
    style: str = ""

    def __init__(self, parts, style: str = ""):
        object.__setattr__(self, "parts", _parts(parts))
        object.__setattr__(self, "style", style)

    @property
    def text(self) -> str:
        return "".join(p.text if isinstance(p, Strong) else p for p in self.parts)


@dataclass(frozen=True)
class Bullets:
    """A bulleted list; each item is a tuple of inline parts."""

    items: tuple[tuple[Inline, ...], ...]
    style: str = ""

    def __init__(self, items, style: str = ""):
        object.__setattr__(self, "items", tuple(_parts(i) for i in items))
        object.__setattr__(self, "style", style)


@dataclass(frozen=True)
class Table:
    """A table of text cells. ``best[j]`` holds the row indices whose cell in column j is the best
    (shown in bold); with ``group_rows`` a first-column value repeated from the row above is left
    blank (see :meth:`shown`), and rows are grouped in HTML."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    best: tuple[frozenset[int], ...] = ()
    group_rows: bool = False
    style: str = ""

    def __init__(self, header, rows, best=(), group_rows: bool = False, style: str = ""):
        header = tuple(str(h) for h in header)
        rows = tuple(tuple(str(c) for c in r) for r in rows)
        for i, r in enumerate(rows):
            if len(r) != len(header):
                raise ValueError(f"`rows[{i}]` must have {len(header)} cells like the header, got {len(r)}")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "best", tuple(frozenset(b) for b in best))
        object.__setattr__(self, "group_rows", bool(group_rows))
        object.__setattr__(self, "style", style)

    def is_best(self, i: int, j: int) -> bool:
        return j < len(self.best) and i in self.best[j]

    def shown(self) -> list[list[str]]:
        """The cells as displayed (group blanks applied); both renderers print exactly these."""
        out = []
        for i, row in enumerate(self.rows):
            cells = list(row)
            if self.group_rows and i > 0 and self.rows[i - 1][0] == row[0]:
                cells[0] = ""
            out.append(cells)
        return out

    def starts_group(self, i: int) -> bool:
        return self.group_rows and (i == 0 or self.rows[i - 1][0] != self.rows[i][0])


@dataclass(frozen=True)
class Figure:
    """A figure: a PNG file name under ``figures/``, its caption, how to draw it and its alt text.

    ``draw()`` returns a matplotlib ``Figure``; it is only called when the PNG is rendered, so
    building the model (e.g. for Markdown alone) never imports matplotlib. ``alt`` says what the
    image shows, with its key numbers, for a reader who cannot see it (default: the caption).
    """

    file: str
    caption: str
    draw: Callable[[], Any] = field(compare=False, repr=False)
    alt: str = ""

    @property
    def alt_text(self) -> str:
        return self.alt or self.caption


Block = Union[Paragraph, Bullets, Table, Figure]


@dataclass
class Section:
    """A titled section (``id`` is the HTML anchor)."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


@dataclass
class Report:
    """The whole report: ``title``, ``header`` blocks above the first section, the sections."""

    title: str
    header: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures()]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]
