"""Running ``python -m netuq`` as a subprocess for the CLI tests (the real client, a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import netuq

SRC = str(Path(netuq.__file__).resolve().parent.parent)

def netuq_cli(*args, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m netuq ARGS`` in a subprocess; returns the completed process (text stdout/stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONWARNINGS", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "netuq", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc_or_err, code: int | None = None, *, names: str | None = None) -> str:
    """Exit code 2 (when given a process), exactly one line on stderr, no traceback; return the line."""
    if isinstance(proc_or_err, subprocess.CompletedProcess):
        assert proc_or_err.returncode == 2, (proc_or_err.returncode, proc_or_err.stderr)
        err = proc_or_err.stderr
    else:
        assert code == 2, (code, proc_or_err)
        err = proc_or_err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    if names is not None:
        assert names in lines[0], (names, lines[0])
    return lines[0]
