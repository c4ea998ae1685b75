import json

import pytest

from netuq.benchmark.config import METHODS, BenchmarkConfig, load_config
from netuq.benchmark.results import RunDir, atomic_write_json, read_json, to_plain


def test_defaults_and_quick():
    cfg = load_config()
    assert cfg.task == "classification" and cfg.methods == METHODS and cfg.members == 5
    quick = load_config(quick=True)
    assert quick.quick and quick.members == 2 and quick.epochs < cfg.epochs


def test_segmentation_defaults_can_be_overridden():
    seg = load_config(task="segmentation")
    assert seg.task == "segmentation" and seg.n_scenes > 0
    assert load_config(task="segmentation", epochs=3).epochs == 3


def test_toml_file_and_flags(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text('[benchmark]\nseed = 7\nmethods = ["deterministic", "mc_dropout"]\nepochs = 4\n')
    cfg = load_config(path, epochs=5)
    assert cfg.seed == 7 and cfg.methods == ("deterministic", "mc_dropout") and cfg.epochs == 5


def test_methods_from_comma_string():
    assert load_config(methods="deterministic,tta").methods == ("deterministic", "tta")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": ("bogus",)}, "`methods` must be a non-empty subset"),
        ({"calibrators": ("platt",)}, "`calibrators` must be a subset"),
        ({"task": "detection"}, "`task` must be one of"),
        ({"epochs": 0}, "`epochs` must be a positive integer"),
        ({"members": 1}, "`members` must be at least 2"),
        ({"severities": (0,)}, "`severities` must be values in 1..5"),
        ({"scene_size": 30}, "`scene_size` must be divisible by 4"),
        ({"dataset": "imagenet"}, "`dataset` must be one of"),
        ({"dataset": "mnist", "task": "segmentation", "data_dir": "d"}, "is a classification data set"),
        ({"dataset": "mnist", "data_dir": "d", "max_train": 3}, "`max_train` must be an integer >= 10"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchmarkConfig(**kwargs)


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("sead = 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['sead'\]"):
        load_config(unknown)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_atomic_write_and_plain(tmp_path):
    import torch

    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": torch.tensor([1.0, float("nan")]), "b": (1, 2), "c": float("inf")})
    assert read_json(path) == {"a": [1.0, None], "b": [1, 2], "c": None}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert to_plain({"x": 1.5}) == {"x": 1.5}
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "broken.json")


def test_run_dir_config_mismatch(tmp_path):
    run = RunDir(tmp_path)
    run.check_config({"seed": 0, "epochs": 3})
    run.check_config({"seed": 0, "epochs": 3})  # same: fine
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['seed'\]\)"):
        run.check_config({"seed": 1, "epochs": 3})
    part = {"metrics": {"nll": 0.5}, "in_distribution": {"none": {"nll": {"mean": 0.5, "std": 0.0}}}}
    run.write_part("m", part)
    assert run.has_part("m") and json.loads(run.part_path("m").read_text()) == part


def test_run_warnings_are_summarised_once_with_counts():
    import warnings

    from netuq.benchmark.runner import _summarise_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn("T hit its bound\nsecond line", RuntimeWarning, stacklevel=1)
        warnings.warn("other", UserWarning, stacklevel=1)
    assert _summarise_warnings(caught) == [
        {"message": "RuntimeWarning: T hit its bound", "count": 3},
        {"message": "UserWarning: other", "count": 1},
    ]


def test_methods_are_derived_from_the_one_recipe_map():
    from netuq.benchmark import recipes
    from netuq.benchmark.config import CALIBRATORS, METHODS

    assert METHODS == tuple(recipes.RECIPES)
    assert CALIBRATORS[0] == "none" and {"temperature", "vector", "matrix"} <= set(CALIBRATORS)
    for name, recipe in recipes.RECIPES.items():
        assert recipe.scores[:2] == ("max_prob", "entropy"), name
        assert ("mutual_information" in recipe.scores) == recipe.epistemic, name
        assert recipe.label


def test_checkpoints_are_written_atomically_and_bad_ones_are_named(tmp_path):
    import pytest
    import torch

    from netuq.benchmark.recipes import load_weights, save_weights

    net = torch.nn.Linear(2, 3)
    path = tmp_path / "models" / "net.pt"
    save_weights(net.state_dict(), path)
    assert [p.name for p in path.parent.iterdir()] == ["net.pt"]  # no temporary file left behind
    other = torch.nn.Linear(2, 3)
    load_weights(other, path)
    assert torch.equal(other.weight, net.weight)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model checkpoint .*net.pt cannot be loaded"):
        load_weights(other, path)
    save_weights({"weight": torch.zeros(5, 5)}, path)
    with pytest.raises(ValueError, match="net.pt cannot be loaded"):
        load_weights(other, path)


def test_fashionmnist_defaults_and_its_debian_folder(monkeypatch, tmp_path):
    from netuq.benchmark import config as config_module
    from netuq.benchmark.config import DATASET_DEFAULTS

    monkeypatch.setitem(config_module.DEFAULT_DIRS, "fashionmnist", (tmp_path,))
    c = load_config(dataset="fashionmnist")
    assert c.data_dir is None and c.seeds == 3  # found in the default folder, several seeds
    for key, value in DATASET_DEFAULTS["fashionmnist"].items():
        assert getattr(c, key) == value
    assert load_config(dataset="fashionmnist", epochs=5, seeds=1).epochs == 5  # flags win
    assert load_config(dataset="fashionmnist", quick=True).seeds == 1
    monkeypatch.setitem(config_module.DEFAULT_DIRS, "fashionmnist", (tmp_path / "missing",))
    with pytest.raises(ValueError, match=r"`data_dir` must name the folder .* \(looked in .*missing\)"):
        load_config(dataset="fashionmnist")
