"""Shared test set-up. Tests mirror the source: tests/<package>/test_<module>.py; tests/integration/ for
real clients (Lightning, torchrun, the CLI as a subprocess, third-party models, a browser);
tests/reference/ for independent reference code; tests/scripts/ for helper programs. pytest runs
in importlib mode, so tests/ and tests/scripts/ go on sys.path here for `from reference... import`
and `from cli_run import`."""

import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

_TESTS = Path(__file__).resolve().parent
for _path in (_TESTS, _TESTS / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


settings.register_profile(
    "netuq", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "netuq"))
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and stable on shared cores
