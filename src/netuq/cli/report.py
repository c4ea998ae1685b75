"""``netuq report RUN_DIR``: render report.html and figures from results.json alone."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("report", help="render report.html from a run folder's results.json")
    p.add_argument("run_dir", help="a folder written by netuq benchmark (holding results.json)")
    p.set_defaults(run=run)


def run(args, echo=print) -> int:
    from ..benchmark.results import read_json
    from ..report import render_report, validate_results

    root = Path(args.run_dir)
    if not root.is_dir():
        raise ValueError(f"`RUN_DIR` {root} is not a folder")
    path = root / "results.json"
    results = read_json(path)
    if "methods" not in results:
        raise ValueError(f"{path} is not a netuq results file (no 'methods' key)")
    try:
        validate_results(results)
    except ValueError as err:
        raise ValueError(f"{path} is not a valid netuq results file: {err}") from None
    path = render_report(results, root)
    echo(f"wrote {path}")
    return 0
