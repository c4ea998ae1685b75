"""The CLI error contract on a corrupt run folder: every file netuq reads back is validated.

Each bad file gives one line on stderr naming it and exit 2 (or, for a part that is not a
finished result, a one-line warning and a safe recompute).
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from cli_run import assert_one_line_error, netuq_cli

from netuq.benchmark import load_config
from netuq.benchmark.recipes import make_network
from netuq.benchmark.results import RunDir, load_checkpoint, read_json, validate_part
from netuq.cli import main  # noqa: E402
from netuq.report import example_results

QUICK = ["--quick", "--methods", "deterministic", "--calibrators", "none", "--no-progress"]


def _base_state():
    config = load_config(None, quick=True, methods=("deterministic",), calibrators=("none",))
    torch.manual_seed(0)
    return make_network(config, 10, 1).state_dict()


class _Foreign:
    def __reduce__(self):
        return (print, ("pwned",))


def _write_foreign(path):
    path.write_bytes(pickle.dumps({"weight": _Foreign()}, protocol=2))


def _write_truncated(path):
    torch.save(_base_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_MODELS = {
    "foreign pickle": (_write_foreign, "refused: it holds Python objects"),
    "truncated": (_write_truncated, "cannot read file"),
    "empty": (lambda p: p.write_bytes(b""), "cannot read file"),
    "not a state dict": (lambda p: torch.save([1, 2, 3], p), "is not a state dict"),
    "a folder": (lambda p: p.mkdir(), "is not a file"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_cached_network_is_refused_naming_it(tmp_path, capsys, case):
    write, message = BAD_MODELS[case]
    (tmp_path / "run" / "models").mkdir(parents=True)
    path = tmp_path / "run" / "models" / "base.pt"
    write(path)
    code = main(["benchmark", *QUICK, "--out", str(tmp_path / "run")])
    line = assert_one_line_error(capsys.readouterr().err, code, names=str(path))
    assert message in line and "delete it to retrain" in line
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work


def test_foreign_checkpoint_through_the_real_client(tmp_path):
    (tmp_path / "run" / "models").mkdir(parents=True)
    _write_foreign(tmp_path / "run" / "models" / "base.pt")
    proc = netuq_cli("benchmark", *QUICK, "--out", tmp_path / "run")
    assert "pwned" not in proc.stdout
    assert_one_line_error(proc, names=str(tmp_path / "run" / "models" / "base.pt"))


BAD_JSON = {
    "array": ("[1, 2]", "must hold a JSON object, got a JSON array"),
    "number": ("3", "must hold a JSON object, got a JSON number (3)"),
    "null": ("null", "must hold a JSON object, got null"),
    "truncated": ('{"seed": ', "is not valid JSON"),
    "NaN": ('{"seed": NaN}', "NaN is not allowed"),
    "deep": ("[" * 100000 + "]" * 100000, "nested too deeply"),
    "binary": (b"\xff\xfe\x00", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_config_json_is_refused_naming_it(tmp_path, capsys, case):
    text, message = BAD_JSON[case]
    run = tmp_path / "run"
    run.mkdir()
    path = run / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["benchmark", *QUICK, "--out", str(run)])
    assert message in assert_one_line_error(capsys.readouterr().err, code, names=str(path))


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_results_json_is_refused_by_report(tmp_path, capsys, case):
    text, message = BAD_JSON[case]
    path = tmp_path / "results.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["report", str(tmp_path)])
    assert message in assert_one_line_error(capsys.readouterr().err, code, names=str(path))


def test_results_json_breaking_the_schema_is_refused_by_report(tmp_path, capsys):
    results = example_results()
    results["methods"]["ensemble"]["ood"]["entropy"]["auroc"] = "high"
    (tmp_path / "results.json").write_text(json.dumps(results))
    code = main(["report", str(tmp_path)])
    line = assert_one_line_error(capsys.readouterr().err, code, names=str(tmp_path / "results.json"))
    assert "['ood']['entropy']['auroc']` must be a finite number or null, got 'high'" in line
    assert not (tmp_path / "report.html").exists()


# ------------------------------------------------------------------ parts: invalid means unfinished
GOOD_PART = {"metrics": {"nll": 0.5, "accuracy": 0.9},
             "in_distribution": {"none": {"nll": {"mean": 0.5, "std": 0.01}}}}
BAD_PARTS = {
    "empty object": "{}",
    "array": "[]",
    "truncated": '{"metrics": {"nll": 0.',
    "no in_distribution": json.dumps({"metrics": {"nll": 0.5}}),
    "schema": json.dumps({**GOOD_PART, "metrics": {"nll": "low"}}),
    "NaN": '{"metrics": {"nll": NaN}, "in_distribution": {"none": {"nll": {"mean": 1}}}}',
}


@pytest.mark.parametrize("case", sorted(BAD_PARTS))
def test_invalid_part_is_not_finished(tmp_path, case):
    run = RunDir(tmp_path)
    run.parts.mkdir()
    run.part_path("m").write_text(BAD_PARTS[case])
    with pytest.warns(RuntimeWarning, match=r"m\.json is not a finished result .*; recomputing m") as rec:
        assert not run.has_part("m")
        assert not run.has_part("m")  # asked again (the runner does): still unfinished, warned once
    assert len(rec) == 1
    with pytest.raises(ValueError, match=r"m\.json (is not a finished result|is not valid JSON|must hold)"):
        run.read_part("m")
    run.write_part("m", GOOD_PART)
    assert run.has_part("m") and run.read_part("m") == GOOD_PART
    assert not run.has_part("other")


def test_validate_part_rules():
    assert validate_part(GOOD_PART) is GOOD_PART
    for bad, message in [({}, "non-empty 'metrics' and 'in_distribution'"), ([], "must be a JSON object"),
                         ({**GOOD_PART, "in_distribution": {}}, "non-empty 'in_distribution'")]:
        with pytest.raises(ValueError, match=message):
            validate_part(bad)


def test_an_empty_part_is_recomputed_by_the_benchmark(tmp_path, capsys):
    """A part holding {} (e.g. a crash between two tools) does not count as a finished method."""
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    torch.save(_base_state(), run / "models" / "base.pt")  # a cached network: no training needed
    (run / "parts").mkdir()
    (run / "parts" / "deterministic.json").write_text("{}")
    assert main(["benchmark", *QUICK, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("netuq: warning:")]
    assert len(warning) == 1 and str(run / "parts" / "deterministic.json") in warning[0]
    assert "recomputing deterministic" in warning[0]
    part = read_json(run / "parts" / "deterministic.json")
    assert validate_part(part)["metrics"]["accuracy"] > 0
    assert read_json(run / "results.json")["methods"]["deterministic"] == part


def test_load_checkpoint_names_the_file_for_every_failure(tmp_path):
    net = torch.nn.Linear(3, 2)
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    other = torch.nn.Linear(3, 2)
    state = load_checkpoint(good, into=other)
    assert torch.equal(other.weight, net.weight) and sorted(state) == ["bias", "weight"]
    with pytest.raises(ValueError, match=r"good\.pt does not fit Linear \(.*size mismatch"):
        load_checkpoint(good, into=torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"good\.pt does not fit Sequential \(Missing key"):
        load_checkpoint(good, into=torch.nn.Sequential(torch.nn.Linear(3, 2)))
    with pytest.raises(ValueError, match=r"missing\.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    for name, (write, message) in BAD_MODELS.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        write(path)
        with pytest.raises(ValueError, match=message) as exc:
            load_checkpoint(path)
        assert str(exc.value).startswith(str(path))
