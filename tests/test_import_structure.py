"""netuq's import structure stays a clean layering (read with ast by tests/scripts/import_structure.py).

No module circles, no import of a part above (LAYERS), no private module or name of another
package, and Prediction's private fields stay inside prediction.py.
"""

import import_structure as S
import pytest


@pytest.fixture(scope="module")
def found():
    return S.report()


def test_no_circles(found):
    assert found["circles"] == []


def test_no_upward_imports(found):
    assert found["upward"] == []


def test_no_private_names_across_packages(found):
    assert found["private"] == []


def test_prediction_fields_stay_private(found):
    assert found["prediction_fields"] == []


def test_the_checker_finds_each_kind(tmp_path):
    # A small fake netuq with one of each defect: the checks are not vacuous.
    pkg = tmp_path / "netuq"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "methods").mkdir()
    files = {
        "__init__.py": "",
        "prediction.py": "class Prediction:\n    def __init__(self):\n        self._count = 0\n",
        "engine/__init__.py": "",
        "engine/_batches.py": "from .. import methods\n",
        "methods/__init__.py": "from ..engine._batches import x\nfrom ..engine import _helper\n",
        "measures.py": "def f(p):\n    p._count = 3\n",
        "report.py": "",
        "calibration.py": "from . import io\n",
        "io.py": ("from . import calibration\nfrom typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n    from . import report\n"),
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    got = S.report(tmp_path)
    assert ["netuq.calibration", "netuq.io"] in got["circles"]
    assert ["netuq.engine._batches", "netuq.methods"] in got["circles"]
    assert any(u.startswith("netuq.methods:1 imports netuq.engine._batches") and "'engine' is above 'methods'" in u
               for u in got["upward"])
    assert not any("netuq.report" in u for u in got["upward"])  # TYPE_CHECKING imports do not run
    assert any("private module netuq.engine._batches" in p for p in got["private"])
    assert any("private name _helper" in p for p in got["private"])
    assert got["prediction_fields"] == ["netuq.measures:2 touches Prediction's private field _count"]
