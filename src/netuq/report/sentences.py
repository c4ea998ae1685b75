"""Every sentence of the report that describes what was run, each made from fields of the results.

One function per kind of sentence; each names, in its docstring, the fields it reads. Nothing
here assumes a default of the benchmark: a field that is not recorded leaves its part of the
sentence out (or says that it is not recorded), never a guess.

Fields read (see :mod:`netuq.report.schema`): ``protocol`` (``source``, ``calibration``,
``folds``, ``repeats``, ``temperature``), ``data`` (``dataset``, ``train``, ``val``,
``calibration``, ``test``, ``pixels``, ``num_classes``, ``ood``), ``seeds``, ``task``,
``config`` (``calibration``, ``cv_repeats``, ``dataset``: results written before ``protocol``
existed), the methods' ``shift`` rows (severities), ``ood_kinds`` (kinds) and ``temperature``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._text import fmt, is_aleatoric, method_label, n_seeds

__all__ = [
    "title", "protocol", "unit", "data_sentence", "run_meta", "spread_words", "calibration_sentence",
    "calibration_howto", "temperature_sentence", "shift_kinds", "shift_scope", "shift_sentence", "ood_kinds",
    "ood_sentence", "words", "severities_text", "idle_settings",
]


def words(items: Sequence[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``.

    Example:
        >>> words(["x"]), words(["x", "y"]), words(["x", "y", "z"])
        ('x', 'x and y', 'x, y and z')
    """
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else fmt(v)


def protocol(results: Mapping) -> dict[str, Any]:
    """The recorded protocol: ``results["protocol"]``, or what older results recorded of it.

    Results written before the ``protocol`` entry: ``compare``'s ``config["calibration"]`` said
    "calibration loader" or "2-fold protocol on the test set" (with ``config["repeats"]``); the
    benchmark's config holds ``cv_repeats`` (it always ran the 2-fold protocol). Otherwise ``{}``.

    Example:
        >>> protocol({"config": {"calibration": "calibration loader"}})["calibration"]
        'held_out'
    """
    pr = results.get("protocol")
    if isinstance(pr, Mapping):
        return dict(pr)
    cfg = results.get("config") or {}
    cal = cfg.get("calibration")
    if cal == "calibration loader":
        return {"source": "compare", "calibration": "held_out", "temperature": "calibration"}
    if isinstance(cal, str) and cal.startswith("2-fold"):
        return {"source": "compare", "calibration": "cross_validation", "folds": 2, "repeats": cfg.get("repeats"),
                "temperature": "test"}
    if "cv_repeats" in cfg:
        return {"source": "benchmark", "calibration": "cross_validation", "folds": 2, "repeats": cfg["cv_repeats"],
                "temperature": "test"}
    return {}


def unit(results: Mapping) -> str:
    """What one test example is: ``"images"`` (classification inputs or segmentation scenes)."""
    return "images"


def title(results: Mapping) -> str:
    """The report's title, from ``protocol.source``, ``data.dataset``, ``task`` and the method labels.

    Example:
        >>> r = {"task": "classification", "methods": {"a": {}, "b": {"label": "B"}}}
        >>> title({**r, "protocol": {"source": "compare"}})
        'Uncertainty of a and B (classification)'
        >>> title({**r, "protocol": {"source": "benchmark"}, "data": {"dataset": "digits"}})
        'netuq benchmark: digits (classification)'
    """
    task = results.get("task", "")
    source = protocol(results).get("source")
    dataset = (results.get("data") or {}).get("dataset") or (results.get("config") or {}).get("dataset")
    if source == "benchmark":
        return f"netuq benchmark: {dataset} ({task})" if dataset else f"netuq benchmark ({task})"
    labels = [method_label(results, n) for n in results["methods"]]
    shown = words(labels) if len(labels) <= 4 else f"{len(labels)} methods"
    return f"Uncertainty of {shown} ({task})"


def data_sentence(results: Mapping) -> str | None:
    """``"Data: digits; 988 training, 270 validation and 539 test images; 10 classes; 200 OOD inputs."``

    Reads ``data``: ``dataset``, ``train``, ``val``, ``calibration``, ``test``, ``pixels``,
    ``num_classes``, ``ood`` (int or ``{kind: count}``); other keys are listed as they are
    (``class_names`` is shown in the per-class section instead).

    Example:
        >>> data_sentence({"task": "classification", "data": {"test": 539, "calibration": 270,
        ...                "ood": {"noise": 100, "photos": 100}}})
        'Data: 270 calibration and 539 test images; 200 OOD inputs (noise 100, photos 100).'
    """
    d = dict(results.get("data") or {})
    if not d:
        return None
    parts = []
    if d.get("dataset"):
        parts.append(str(d.pop("dataset")))
    sizes = [f"{_num(d.pop(k))} {w}" for k, w in (("train", "training"), ("val", "validation"),
                                                   ("calibration", "calibration"), ("test", "test")) if k in d]
    if sizes:
        text = words(sizes) + f" {unit(results)}"
        if d.get("pixels") is not None:
            text += f" ({_num(d['pixels'])} labelled test pixels)"
        parts.append(text)
    d.pop("pixels", None)
    if d.get("num_classes") is not None:
        parts.append(f"{_num(d.pop('num_classes'))} classes")
    d.pop("num_classes", None)
    d.pop("class_names", None)
    ood = d.pop("ood", None)
    if isinstance(ood, Mapping) and ood:
        total = sum(v for v in ood.values() if isinstance(v, int))
        per = ", ".join(f"{k.replace('_', ' ')} {_num(v)}" for k, v in ood.items())
        what = "anomaly pixels" if list(ood) == ["anomaly"] else "OOD inputs"
        parts.append(f"{_num(total)} {what} ({per})" if len(ood) > 1 or what == "OOD inputs" else
                     f"{_num(total)} {what}")
    elif ood is not None:
        parts.append(f"{_num(ood)} OOD inputs")
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = ", ".join(f"{a} {_num(b)}" for a, b in v.items())
        elif isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        else:
            v = _num(v)
        parts.append(f"{str(k).replace('_', ' ')}: {v}")
    return "Data: " + "; ".join(parts) + "." if parts else None


def run_meta(results: Mapping) -> str:
    """``"3 methods · 3 seeds (0, 1, 2) · run time 12.3 s"`` (``methods``, ``seeds``, ``runtime_s``)."""
    n = len(results["methods"])
    meta = [f"{n} method{'s' if n != 1 else ''}"]
    if results.get("seeds"):
        meta.append(f"{n_seeds(results)} seeds ({', '.join(results['seeds'])})")
    else:
        seed = (results.get("config") or {}).get("seed")
        meta.append(f"1 seed ({seed})" if seed is not None else "1 run")
    total = (results.get("runtime_s") or {}).get("total_this_run")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        meta.append(f"run time {fmt(float(total), 1)} s")
    return " · ".join(meta)


def _repeats(pr: Mapping) -> str:
    r = pr.get("repeats")
    if not isinstance(r, int):
        return "repeated 2-fold cross-validation on the test set"
    folds = (pr.get("folds") or 2) * r
    return (f"2-fold cross-validation on the test set, {'once' if r == 1 else f'repeated {r} times'} "
            f"({folds} folds)")


def spread_words(results: Mapping) -> str:
    """What a ± means in the calibration table: over seeds, over the folds, or none.

    Reads ``seeds``, ``protocol.calibration`` and ``protocol.repeats``.

    Example:
        >>> spread_words({"protocol": {"calibration": "held_out"}})
        'one fit on the calibration set, so no spread'
        >>> spread_words({"protocol": {"calibration": "cross_validation", "folds": 2, "repeats": 5}})
        'mean ± standard deviation over the 10 folds'
    """
    n = n_seeds(results)
    if n >= 2:
        return f"mean ± standard deviation over {n} seeds"
    pr = protocol(results)
    if pr.get("calibration") == "held_out":
        return "one fit on the calibration set, so no spread"
    if pr.get("calibration") == "cross_validation":
        r = pr.get("repeats")
        folds = (pr.get("folds") or 2) * r if isinstance(r, int) else None
        return f"mean ± standard deviation over the {folds} folds" if folds else \
            "mean ± standard deviation over the folds"
    return "one run (how the spread was made is not recorded)"


def calibration_sentence(results: Mapping) -> str:
    """How the calibration table's numbers were made (``protocol``, ``data``, ``seeds``).

    Example:
        >>> calibration_sentence({"protocol": {"calibration": "held_out"}, "data": {"calibration": 270, "test": 539},
        ...                       "task": "classification"})[:80]
        'Calibrators fitted on the calibration set (270 images) and scored on the whole t'
    """
    pr, d, u = protocol(results), results.get("data") or {}, unit(results)
    test = f" ({_num(d['test'])} {u})" if d.get("test") is not None else ""
    n = n_seeds(results)
    if pr.get("calibration") == "held_out":
        size = f" ({_num(d['calibration'])} {u})" if d.get("calibration") is not None else ""
        text = f"Calibrators fitted on the calibration set{size} and scored on the whole test set{test}"
        text += f"; {spread_words(results)}" if n >= 2 else ": one fit, so no spread is shown"
        return text + ". Best per column in bold."
    if pr.get("calibration") == "cross_validation":
        text = (f"Test set{test}: each calibrator is fitted on one random half and scored on the other, both ways "
                f"({_repeats(pr)}; Ashukha et al. 2020)")
        if n >= 2:
            return text + f"; {spread_words(results)} (each seed's number is the mean over its folds). " \
                          "Best per column in bold."
        return text + f"; {spread_words(results)}. Best per column in bold."
    return f"Test set{test}; how the calibrators were fitted is not recorded in these results. Best per column in bold."


def calibration_howto(results: Mapping) -> str:
    """The "How to read" sentence on the calibration protocol (``protocol``, ``seeds``)."""
    pr = protocol(results)
    n = n_seeds(results)
    over = f" With {n} seeds the tables show mean ± standard deviation over the seeds." if n >= 2 else ""
    if pr.get("calibration") == "held_out":
        return ("Calibrated numbers come from calibrators fitted on a separate calibration set and applied to the "
                "test set." + (over or " One fit gives one number: there is no spread to compare against."))
    if pr.get("calibration") == "cross_validation":
        return ("Calibrated numbers follow Ashukha et al. (2020): the test set is split in two halves at random, the "
                "calibrator is fitted on one half and scored on the other, both ways"
                + (", repeated" if (pr.get("repeats") or 1) > 1 else "") + "."
                + (over or " The tables show mean ± standard deviation over these folds."))
    return "How the calibrated numbers were made is not recorded in these results." + over


def temperature_sentence(results: Mapping) -> str | None:
    """Where the temperature shown was fitted (``protocol.temperature``, ``data``) and its values.

    Example:
        >>> r = {"methods": {"a": {"temperature": 1.5}}, "data": {"test": 539}}
        >>> temperature_sentence({**r, "protocol": {"temperature": "test"}})[:60]
        'Temperature of temperature scaling fitted on the whole test '
        >>> temperature_sentence({**r, "protocol": {"temperature": "calibration"}})[:66]
        'Temperature of temperature scaling fitted on the calibration set: '
    """
    temps = [(n, m["temperature"]) for n, m in results["methods"].items() if m.get("temperature") is not None]
    if not temps:
        return None
    where = protocol(results).get("temperature")
    d = results.get("data") or {}
    if where == "test":
        head = ("Temperature of temperature scaling fitted on the whole test set (the one applied to the shifted "
                "sets; the table's calibrated numbers use the cross-fitted halves instead)")
    elif where == "calibration":
        size = f" ({_num(d['calibration'])} {unit(results)})" if d.get("calibration") is not None else ""
        head = f"Temperature of temperature scaling fitted on the calibration set{size}"
    else:
        head = "Temperature of temperature scaling (where it was fitted is not recorded)"
    if results.get("seeds"):
        head += f", mean over {n_seeds(results)} seeds"
    return head + ": " + ", ".join(f"{method_label(results, n)} T = {fmt(t)}" for n, t in temps) + "."


def severities_text(sev: Sequence[int]) -> str:
    """``"severity 3"``, ``"severities 2 and 4"``, ``"severities 1–5"`` (a run of three or more).

    Example:
        >>> severities_text([3]), severities_text([2, 4]), severities_text([1, 2, 3, 4, 5])
        ('severity 3', 'severities 2 and 4', 'severities 1–5')
    """
    sev = sorted(sev)
    if len(sev) == 1:
        return f"severity {sev[0]}"
    if len(sev) >= 3 and sev == list(range(sev[0], sev[-1] + 1)):
        return f"severities {sev[0]}–{sev[-1]}"
    return "severities " + words([str(s) for s in sev])


def shift_kinds(results: Mapping) -> dict[str, list[int]]:
    """Kind of shift -> the severities (>= 1) its rows hold, over all methods (the rows themselves)."""
    out: dict[str, set[int]] = {}
    for m in results["methods"].values():
        for kind, rows in (m.get("shift") or {}).items():
            out.setdefault(kind, set()).update(int(r["severity"]) for r in rows if r.get("severity", 0) >= 1)
    return {k: sorted(v) for k, v in out.items() if v}


def shift_scope(results: Mapping) -> str:
    """``"4 shifts at severities 2 and 4"`` or ``"blur at severity 1; rotation at severities 1–3"``
    (the shift rows).

    Example:
        >>> rows = [{"severity": 2}, {"severity": 4}]
        >>> shift_scope({"methods": {"a": {"shift": {"blur": rows, "rotation": rows}}}})
        '2 shifts (blur and rotation) at severities 2 and 4'
    """
    kinds = shift_kinds(results)
    if not kinds:
        return "no shift"
    sevs = {tuple(v) for v in kinds.values()}
    if len(sevs) == 1:
        names = words([k.replace("_", " ") for k in kinds])
        what = f"{len(kinds)} shifts ({names})" if len(kinds) > 1 else names
        return f"{what} at {severities_text(next(iter(sevs)))}"
    return "; ".join(f"{k.replace('_', ' ')} at {severities_text(v)}" for k, v in kinds.items())


def shift_sentence(results: Mapping) -> str | None:
    """``"Averaged over 2 kinds of shift (blur and rotation) at severities 2 and 4."`` (the shift rows).

    Example:
        >>> rows = [{"severity": 2, "ece": 0.1}, {"severity": 4, "ece": 0.2}]
        >>> shift_sentence({"methods": {"a": {"shift": {"blur": rows}}}})
        'Averaged over 1 kind of shift (blur) at severities 2 and 4.'
    """
    kinds = shift_kinds(results)
    if not kinds:
        return None
    names = [k.replace("_", " ") for k in kinds]
    sevs = {tuple(v) for v in kinds.values()}
    head = f"Averaged over {len(kinds)} kind{'s' if len(kinds) != 1 else ''} of shift"
    if len(sevs) == 1:
        text = f"{head} ({words(names)}) at {severities_text(next(iter(sevs)))}"
    else:
        text = f"{head}: " + "; ".join(f"{k.replace('_', ' ')} at {severities_text(v)}" for k, v in kinds.items())
    if results.get("seeds"):
        text += f"; mean ± standard deviation over {n_seeds(results)} seeds"
    return text + "."


def ood_kinds(results: Mapping) -> list[str]:
    """The kinds of OOD input the methods were scored on (``ood_kinds`` keys, in order)."""
    kinds: list[str] = []
    for m in results["methods"].values():
        kinds += [k for k in (m.get("ood_kinds") or {}) if k not in kinds]
    return kinds


def ood_sentence(results: Mapping) -> str:
    """What the OOD table ranks (``task``, ``ood_kinds``, ``data.ood``, ``data.test``, ``seeds``; the ``ood``
    scores, for the note on aleatoric ones).

    Example:
        >>> r = {"task": "classification", "data": {"test": 539, "ood": {"noise": 200}},
        ...      "methods": {"a": {"ood_kinds": {"noise": {}}}}}
        >>> ood_sentence(r)[:62]
        'Scores rank the 200 OOD inputs (noise) against the 539 test im'
    """
    kinds = ood_kinds(results)
    d = results.get("data") or {}
    sizes = d.get("ood") if isinstance(d.get("ood"), Mapping) else {}
    names = [k.replace("_", " ") for k in kinds]
    if results.get("task") == "segmentation" and kinds in ([], ["anomaly"]):
        what = "unknown-object (anomaly) pixels against the in-distribution pixels of the test scenes"
    else:
        total = sum(v for v in sizes.values() if isinstance(v, int)) if sizes else d.get("ood")
        count = f"{_num(total)} " if isinstance(total, int) else ""
        test = f"the {_num(d['test'])} test {unit(results)}" if d.get("test") is not None else "the test set"
        if len(kinds) > 1:
            per = ", ".join(f"{k.replace('_', ' ')} {_num(sizes[k])}" if k in sizes else k.replace("_", " ")
                            for k in kinds)
            what = f"the {count}OOD inputs of {len(kinds)} kinds ({per}), pooled, against {test}"
        elif kinds:
            what = f"the {count}OOD inputs ({names[0]}) against {test}"
        else:
            what = f"the {count}OOD inputs against {test}"
    spread = f"mean ± standard deviation over {n_seeds(results)} seeds" if results.get("seeds") else \
        "one run, so no spread"
    aleatoric = any(is_aleatoric(s, results) for m in results["methods"].values() for s in (m.get("ood") or {}))
    return (f"Scores rank {what}; higher score = less sure; {spread}. Best per column in bold; AUROC below 0.5 is "
            "marked inverted" + ("; aleatoric scores are shown but not ranked." if aleatoric else "."))


def idle_settings(results: Mapping) -> dict[str, str]:
    """Settings of ``config`` that had no effect on this run -> why (the Run section leaves them out
    of its configuration table and says so, instead of listing e.g. ``repeats 5`` for a run that
    fitted its calibrators on a calibration set).

    Reads ``protocol.source``, ``protocol.calibration``, ``task``, ``config``.

    Example:
        >>> r = {"task": "classification", "protocol": {"source": "compare", "calibration": "held_out"},
        ...      "config": {"repeats": 5, "max_pixels": 250000, "n_bins": 15}}
        >>> sorted(idle_settings(r))
        ['max_pixels', 'repeats']
        >>> idle_settings({**r, "protocol": {"source": "compare", "calibration": "cross_validation"}})
        {'max_pixels': 'segmentation only'}
    """
    cfg = results.get("config") or {}
    pr = protocol(results)
    task = results.get("task")
    idle: dict[str, str] = {}
    if pr.get("source") == "compare":
        if pr.get("calibration") == "held_out":
            idle["repeats"] = "the 2-fold protocol did not run: the calibrators were fitted on the calibration set"
        if task == "classification":
            idle["max_pixels"] = "segmentation only"
    elif pr.get("source") == "benchmark":
        if task == "classification":
            idle.update({k: "segmentation only" for k in ("n_scenes", "scene_size", "calibration_pixels")})
            if cfg.get("dataset") == "digits":
                idle.update({k: "real data sets only (the digits are used whole)"
                             for k in ("data_dir", "max_train", "max_test")})
        elif task == "segmentation":
            idle.update({k: "classification only" for k in ("dataset", "data_dir", "max_train", "max_test")})
    return {k: v for k, v in idle.items() if k in cfg}
