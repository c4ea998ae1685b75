"""The ``logits_held_out`` result section of ``netuq benchmark --logits``: per network, every
calibrator fitted on the validation file and scored on the test file, and the recommendation.

Value (per network)::

    {"val": int, "test": int, "classes": int,
     "rows": {CAL: {"nll", "ece", "brier", "accuracy", "fit_s": float}},   # CAL "none" or a registry name
     "recommendation"?: {"metric": "nll", "recommended": CAL | "tied", "best": CAL, "tied_with": [CAL]}}

Nothing is computed by ``compare`` (``start`` is None); the report renders the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..results.sections import Section, register

__all__ = ["KEY", "SECTION"]

KEY = "logits_held_out"
_FIELDS = ("nll", "ece", "brier", "accuracy", "fit_s")


def _validate(value: Any, path: str) -> None:
    if not isinstance(value, Mapping) or not isinstance(value.get("rows"), Mapping) or not value["rows"]:
        raise ValueError(f"`{path}` must be a dict with a non-empty 'rows' dict, got {value!r}")
    for cal, row in value["rows"].items():
        if not isinstance(row, Mapping) or not all(isinstance(row.get(k), (int, float)) for k in _FIELDS):
            raise ValueError(f"`{path}['rows'][{cal!r}]` must hold numbers {_FIELDS}, got {row!r}")


def _render(results: Mapping[str, Any]) -> list:
    from ..report import cal_label
    from ..report.model import Paragraph, Table

    nets = {n: m[KEY] for n, m in results.get("methods", {}).items() if KEY in m}
    if not nets:
        return []
    rows = [(n, cal_label(c, results), f"{r['ece']:.4f}", f"{r['nll']:.4f}", f"{r['brier']:.4f}",
             f"{r['accuracy']:.4f}", f"{1000 * r['fit_s']:.1f}")
            for n, v in nets.items() for c, r in v["rows"].items()]
    blocks: list = [Paragraph("Each calibrator fitted on the network's validation file and scored on its test file "
                              "(ECE: 15 equal-width bins over the top-label confidence). Fit time in milliseconds, "
                              "one run on this machine."),
                    Table(("network", "calibrator", "ECE", "NLL", "Brier", "accuracy", "fit ms"), rows,
                          group_rows=True)]
    words = []
    for n, v in nets.items():
        rec = v.get("recommendation")
        if rec is None:
            continue
        if rec["recommended"] == "tied":
            tied = ", ".join(cal_label(c, results) for c in [rec["best"], *rec["tied_with"]])
            words.append(f"{n}: tied ({tied} within the spread)")
        else:
            words.append(f"{n}: {cal_label(rec['recommended'], results)}")
    if words:
        blocks.append(Paragraph("Recommended by the 2-fold protocol's NLL on the test file (named only when its "
                                "lead exceeds the larger sd): " + "; ".join(words) + "."))
    return blocks


SECTION = register(Section(KEY, "Calibrators fitted on the validation file", validate=_validate, render=_render,
                           default=False), replace=True)
