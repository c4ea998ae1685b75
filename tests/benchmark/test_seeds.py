"""Multi-seed benchmark runs: seeds config, per-seed folders and resume, the aggregate, TTA's
augmented training, the confidence OOD perturbation and the notes the report shows (tiny settings)."""

from __future__ import annotations

import os
import statistics

import pytest
import torch

from netuq import tta as T
from netuq.benchmark import load_config, recipes, run_benchmark
from netuq.benchmark import runner as runner_module
from netuq.cli import main
from netuq.report import validate_results
from netuq.report.render import summary_lines, to_markdown

TINY = dict(quick=True, epochs=1, n_ood=30, severities=(5,), calibrators=("none", "temperature"))


def test_seeds_defaults_and_validation():
    assert load_config().seeds == 3 and load_config().seed_list == (0, 1, 2)
    assert load_config(quick=True).seeds == 1
    assert load_config(task="segmentation").seeds == 1
    assert load_config(seed=5, seeds=2).seed_list == (5, 6)
    one = load_config(seed=5, seeds=2).for_seed(6)
    assert (one.seed, one.seeds) == (6, 1)
    for bad in (0, -1, True, "3", 1.5):
        with pytest.raises(ValueError, match=r"`seeds` must be a positive integer, got"):
            load_config(seeds=bad)
    with pytest.raises(ValueError, match=r"`seed` must be a non-negative integer, got -1"):
        load_config(seed=-1)
    with pytest.raises(ValueError, match=r"`patience` must be a positive integer or None, got 0"):
        load_config(patience=0)


def test_seeds_flag_bad_value_one_line(capsys, tmp_path):
    assert main(["benchmark", "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`seeds` must be a positive integer" in err
    assert main(["benchmark", "--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`--jobs` must be a positive integer, got 0" in err


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    config = load_config(seeds=2, seed=3, methods=("deterministic", "tta", "confidence"), **TINY)
    return config, out, run_benchmark(config, out, render=False)


def test_multi_seed_results_keep_every_seed(two_seeds):
    config, out, results = two_seeds
    validate_results(results)
    assert sorted(results["seeds"]) == ["3", "4"]
    assert results["config"]["seeds"] == 2 and results["config"]["seed"] == 3
    for s in ("3", "4"):
        assert (out / f"seed-{s}" / "parts" / "tta.json").is_file()
        assert (out / f"seed-{s}" / "results.json").is_file()
        assert results["seeds"][s]["config"]["seed"] == int(s)
    per = [results["seeds"][s]["methods"]["deterministic"]["in_distribution"]["none"]["nll"]["mean"]
           for s in ("3", "4")]
    assert per[0] != per[1]  # independent split, training and sampling
    stat = results["methods"]["deterministic"]["in_distribution"]["none"]["nll"]
    assert stat["values"] == per
    assert stat["mean"] == pytest.approx(statistics.fmean(per))
    assert stat["std"] == pytest.approx(statistics.stdev(per))
    acc = [results["seeds"][s]["methods"]["tta"]["metrics"]["accuracy"] for s in ("3", "4")]
    assert results["methods"]["tta"]["seed_values"]["metrics"]["accuracy"] == acc
    # per-kind OOD numbers are there, per seed and averaged
    assert set(results["methods"]["confidence"]["ood_kinds"]) == set(results["seeds"]["3"]["methods"]["confidence"]
                                                                    ["ood_kinds"])


def test_tta_has_its_own_network_and_the_notes_say_how(two_seeds):
    config, out, results = two_seeds
    models = out / "seed-3" / "models"
    base, aug = torch.load(models / "base.pt"), torch.load(models / "tta.pt")
    assert any(not torch.equal(base[k], aug[k]) for k in base)
    text = " ".join(results["notes"])
    assert "TTA: its network is trained with the augmentations" in text
    assert "cutout was not used" in text and "ε = 0.001" in text
    assert "2 seeds (3, 4)" in text
    md = to_markdown(results)
    assert "cutout was not used" in md and "Wang et al. 2019" in md


def test_quick_run_is_labelled(two_seeds):
    _, _, results = two_seeds
    assert results["config"]["quick"] is True
    assert "quick run: numbers are not meaningful" in " ".join(summary_lines(results)).lower()


def test_confidence_scores_ood_on_the_perturbed_input(two_seeds):
    config, out, _ = two_seeds
    cfg = config.for_seed(3)
    data = runner_module.prepare_data(cfg)
    predict = recipes.confidence(cfg, data, out / "seed-3" / "models" / "confidence.pt")
    pred = predict(data.test[0][:16])
    assert "confidence_unperturbed" in pred.scores
    # the perturbation moves c toward higher confidence (DeVries & Taylor)
    assert (pred.scores["confidence"] >= pred.scores["confidence_unperturbed"] - 1e-6).all()


def test_interrupted_seed_resumes(tmp_path, monkeypatch):
    config = load_config(seeds=2, methods=("deterministic", "mc_dropout"), **TINY)
    calls = []
    real = runner_module.evaluate_method

    def flaky(method, predictor, data, cfg):
        calls.append((cfg.seed, method))
        if (cfg.seed, method) == (1, "mc_dropout") and calls.count((1, "mc_dropout")) == 1:
            raise KeyboardInterrupt
        return real(method, predictor, data, cfg)

    monkeypatch.setattr(runner_module, "evaluate_method", flaky)  # seen in this process only: jobs=1
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, tmp_path, render=False, jobs=1)
    assert not (tmp_path / "results.json").exists()
    assert sorted(p.stem for p in (tmp_path / "seed-0" / "parts").glob("*.json")) == ["deterministic", "mc_dropout"]
    assert [p.stem for p in (tmp_path / "seed-1" / "parts").glob("*.json")] == ["deterministic"]
    seed0 = (tmp_path / "seed-0" / "parts" / "mc_dropout.json").read_bytes()
    results = run_benchmark(config, tmp_path, render=False, jobs=1)
    assert calls == [(0, "deterministic"), (0, "mc_dropout"), (1, "deterministic"), (1, "mc_dropout"),
                     (1, "mc_dropout")]
    assert (tmp_path / "seed-0" / "parts" / "mc_dropout.json").read_bytes() == seed0
    assert sorted(results["seeds"]) == ["0", "1"]
    # a different number of seeds in the same folder is refused
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['seeds'\]\)"):
        run_benchmark(config.replace(seeds=3), tmp_path, render=False)


def _without_runtimes(obj):
    if isinstance(obj, dict):
        return {k: _without_runtimes(v) for k, v in obj.items() if k not in ("runtime_s", "warnings")}
    if isinstance(obj, list):
        return [_without_runtimes(v) for v in obj]
    return obj


def test_seeds_in_parallel_processes_equal_the_sequential_run_and_resume(tmp_path):
    """Digits seeds run on one thread wherever they run, so jobs=2 (two spawned processes) gives the
    numbers of jobs=1 exactly; a rerun after a lost part recomputes only that part."""
    config = load_config(seeds=2, methods=("deterministic", "mc_dropout"), **TINY)
    assert runner_module.default_jobs(config) == min(2, os.cpu_count() or 1)
    assert runner_module.default_jobs(config.replace(dataset="mnist", data_dir=str(tmp_path))) == 1
    assert runner_module.default_jobs(config.replace(seeds=1)) == 1
    seq = run_benchmark(config, tmp_path / "seq", render=False, jobs=1)
    par = run_benchmark(config, tmp_path / "par", render=False, jobs=2)
    assert _without_runtimes(par["seeds"]) == _without_runtimes(seq["seeds"])
    lost = tmp_path / "par" / "seed-1" / "parts" / "mc_dropout.json"
    kept = (tmp_path / "par" / "seed-0" / "parts" / "mc_dropout.json").read_bytes()
    lost.unlink()
    again = run_benchmark(config, tmp_path / "par", render=False, jobs=2)
    assert lost.is_file() and (tmp_path / "par" / "seed-0" / "parts" / "mc_dropout.json").read_bytes() == kept
    assert _without_runtimes(again["seeds"]) == _without_runtimes(seq["seeds"])
    with pytest.raises(ValueError, match=r"`jobs` must be a positive integer, got 0"):
        run_benchmark(config, tmp_path / "bad", render=False, jobs=0)


@pytest.mark.parametrize("segmentation", [False, True])
def test_augmenting_loader_draws_views_of_each_image(segmentation):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 6, 6, generator=gen)
    if segmentation:
        y = torch.randint(0, 3, (40, 6, 6), generator=gen)
        transforms = T.Compose([T.HorizontalFlip(), T.Shift([(1, 1), (-1, -1)])])
    else:
        y = torch.arange(40)
        transforms = T.Compose([T.Shift([(0, 1), (1, 0)], mode="zeros"), T.Multiply([0.5, 2.0])])
    views = list(transforms)
    loader = recipes.augmenting_loader((x, y), transforms, batch_size=16, seed=1, segmentation=segmentation)
    seen, used, first = [], set(), []
    for xb, yb in loader:
        first.append(xb)
        for xi, yi in zip(xb, yb):
            # find the original image: each output is some view of exactly one input
            hits = [(i, v) for i in range(len(x)) for v, view in enumerate(views)
                    if torch.allclose(view.augment(x[i : i + 1])[0], xi)]
            assert hits, "an augmented image is no view of any input"
            i, v = hits[0]
            seen.append(i)
            used.add(v)
            if segmentation:
                assert torch.equal(views[v].augment(y[i : i + 1].unsqueeze(1)).squeeze(1)[0], yi)
            else:
                assert int(yi) == i  # the label follows its image
    assert sorted(seen) == list(range(40)) and len(used) > 2
    again = [xb for xb, _ in recipes.augmenting_loader((x, y), transforms, batch_size=16, seed=1,
                                                       segmentation=segmentation)]
    assert len(again) == len(first) and all(torch.equal(a, b) for a, b in zip(again, first))  # seeded
    second = [xb for xb, _ in loader]  # the next epoch draws new order and views
    assert not all(torch.equal(a, b) for a, b in zip(second, first))


def test_augmenting_loader_refuses_value_changes_for_segmentation():
    with pytest.raises(ValueError, match="only move pixels"):
        recipes.augmenting_loader((torch.rand(4, 1, 4, 4), torch.zeros(4, 4, 4, dtype=torch.long)),
                                  T.Compose([T.Multiply([0.5])]), batch_size=2, seed=0, segmentation=True)
