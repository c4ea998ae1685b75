"""results.csv: every number of a results dict as one flat table (written atomically)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._files import atomic_write_text
from .schema import validate_results
from .tables import calibrations

__all__ = ["write_csv", "csv_rows"]


def _method_rows(name: str, m: Mapping, cals: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for cal in cals:
        stats = (m.get("in_distribution") or {}).get(cal)
        if stats is None:
            continue
        row: dict[str, Any] = {"method": name, "calibration": cal, "setting": "in_distribution"}
        for metric, stat in stats.items():
            row[metric] = stat.get("mean")
            row[f"{metric}_std"] = stat.get("std")
        rows.append(row)
    if m.get("metrics"):
        rows.append({"method": name, "calibration": "none", "setting": "test", **m["metrics"]})
    for kind, srows in (m.get("shift") or {}).items():
        for r in srows:
            rows.append({"method": name, "calibration": "none", "setting": "shift", "kind": kind, **r})
    for key in ("ood", "misclassification"):
        for score, vals in (m.get(key) or {}).items():
            rows.append({"method": name, "calibration": "none", "setting": key, "kind": score, **vals})
    for ood_kind, scores in (m.get("ood_kinds") or {}).items():
        for score, vals in scores.items():
            rows.append({"method": name, "calibration": "none", "setting": f"ood:{ood_kind}", "kind": score, **vals})
    return rows


def csv_rows(results: Mapping) -> list[dict[str, Any]]:
    """The rows of results.csv (see :func:`write_csv`), for a validated results dict."""
    rows: list[dict[str, Any]] = []
    cals = calibrations(results)
    for name, m in results["methods"].items():
        rows += _method_rows(name, m, cals)
    for seed, entry in (results.get("seeds") or {}).items():
        seed_cals = calibrations(entry)
        for name, m in entry["methods"].items():
            rows += [{**r, "seed": seed} for r in _method_rows(name, m, seed_cals)]
    return rows


def write_csv(results: Mapping, path: str | Path) -> Path:
    """Write results.csv: one row per method x calibration x setting.

    Settings: ``in_distribution`` (one row per calibration; columns ``<metric>`` = mean and
    ``<metric>_std``), ``test`` (the uncalibrated whole-test-set metrics), ``shift`` (one row per
    kind x severity), ``ood`` and ``misclassification`` (one row per score, in column ``kind``),
    ``ood:KIND`` (per kind of OOD input, one row per score). For several seeds the rows of the
    aggregate (means; ``_std`` = sd over seeds) come first, then every seed's own rows with the
    seed in column ``seed``. Empty cells mean "not measured". The file is replaced atomically (a
    symlink at ``path`` is replaced, its target left alone).

    Example:
        >>> import tempfile, os
        >>> from netuq.report.schema import example_results
        >>> p = write_csv(example_results(methods=("ensemble",)), os.path.join(tempfile.mkdtemp(), "r.csv"))
        >>> open(p).readline().split(",")[:5]
        ['method', 'calibration', 'setting', 'kind', 'severity']
    """
    path = Path(path)
    write_csv_text(validate_results(results), path)
    return path


def write_csv_text(results: Mapping, path: Path) -> None:
    rows = csv_rows(results)
    columns = ["method", "calibration", "setting", "kind", "severity"]
    if results.get("seeds"):
        columns.append("seed")
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
