"""Run every benchmark in this folder (``bench_*.py``) in turn: ``make bench``.

Each benchmark prints its own table of measured figures and ratios. Pass names to run a subset:
``python perf/run_all.py streaming calibration``.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

here = Path(__file__).parent
wanted = sys.argv[1:]
scripts = sorted(here.glob("bench_*.py"))
if wanted:
    scripts = [s for s in scripts if any(w in s.stem for w in wanted)]
failed = []
for script in scripts:
    print(f"\n=== {script.stem} " + "=" * max(0, 70 - len(script.stem)), flush=True)
    start = time.perf_counter()
    try:
        runpy.run_path(str(script), run_name="__main__")
    except (Exception, SystemExit) as err:  # a failed target (sys.exit) must not hide the others' figures
        if not (isinstance(err, SystemExit) and err.code in (None, 0)):
            failed.append(script.stem)
            print(f"!! {script.stem} failed: {type(err).__name__}: {err}", flush=True)
    print(f"--- {script.stem} took {time.perf_counter() - start:.1f} s", flush=True)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")
