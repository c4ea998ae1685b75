"""The predict pass of ``compare``: one stream over the test loader for one method.

Per batch it feeds the streaming metrics (uncalibrated, each calibrated one, each member's), the
seeded row sample (log-probabilities, labels, image index, scores) and the anomaly sample, the
registered result sections, and keeps a few segmentation examples for the report. Nothing of
size (N, C, H, W) is held for the whole set.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from .. import scores as vocabulary
from ..results import sections as result_sections
from ._calibrate import Fitted
from ._run import MethodRun
from ._sample import Reservoir, flat_rows, per_row, sampled_scores, take_rows
from ._scoring import streaming, uncertainty_scores
from ._views import ClassCounts

__all__ = ["TestPass", "image_for_display"]


def image_for_display(x: torch.Tensor) -> torch.Tensor:
    """(K, C, H, W) inputs as (K, H, W) gray or (K, H, W, 3) images in [0, 1] (min-max per image if needed)."""
    img = x.detach().float().cpu()
    img = img.permute(0, 2, 3, 1) if img.shape[1] == 3 else img[:, 0]
    lo = img.reshape(len(img), -1).amin(1).view(-1, *[1] * (img.ndim - 1))
    hi = img.reshape(len(img), -1).amax(1).view(-1, *[1] * (img.ndim - 1))
    if bool((lo >= 0).all()) and bool((hi <= 1).all()):
        return img
    return (img - lo) / (hi - lo).clamp_min(1e-12)


class _Examples:
    """Up to ``want`` segmentation examples for the report's figure, all of one spatial size.

    The figure stacks them (K, H, W): with images of varying size (batch size 1, as in VOC or
    ADE20K validation sets) the examples are the first ``want`` images of the first kept image's
    size; images of other sizes are skipped.
    """

    def __init__(self, want: int) -> None:
        self.want = int(want)
        self.size: tuple[int, ...] | None = None
        self.cols: dict[str, list[torch.Tensor]] = {}
        self.kept = 0

    def offer(self, batch, y: torch.Tensor, pred, anomaly: torch.Tensor | None, epistemic: bool) -> None:
        if self.kept >= self.want or batch.x.ndim != 4 or tuple(batch.x.shape[-2:]) != tuple(y.shape[-2:]):
            return
        size = tuple(y.shape[1:])
        if self.size is None:
            self.size = size
        elif size != self.size:
            return
        k = self.want - self.kept
        ex = {"image": image_for_display(batch.x[:k]), "label": y[:k], "prediction": pred.prediction[:k],
              "entropy": pred.entropy[:k], "anomaly": None if anomaly is None else anomaly[:k].to(torch.int64)}
        if epistemic and pred.num_samples > 1:
            ex["epistemic"] = pred.epistemic[:k]
        for key, t in ex.items():
            if t is not None:
                self.cols.setdefault(key, []).append(t)
        self.kept += len(ex["label"])

    def result(self) -> dict[str, Any] | None:
        if not self.cols:
            return None
        out: dict[str, Any] = {k: torch.cat(v) for k, v in self.cols.items()}
        out.setdefault("epistemic", None)
        out.setdefault("anomaly", None)
        return out


class TestPass:
    """Everything one stream over the test loader gathers for one method (see the module)."""

    def __init__(self, run: MethodRun, fitted: Fitted | None) -> None:
        self.run, self.fitted = run, fitted
        self.task: str | None = None
        self.num_classes = 0
        self.images = self.n_valid = self.errors = 0
        self.metrics = None
        self.members: list = []
        self.calibrated: dict[str, Any] = {}
        self.sample: Reservoir | None = None
        self.anomaly: Reservoir | None = None
        self.examples = _Examples(run.options.examples)
        self.sections: dict[str, Any] = {}
        self._warned: set[str] = set()
        ctx = result_sections.Context(
            run.name, run.method, run.traits, run.predictor, {}, vars(run.options),
            None if fitted is None else fitted.sample,
            lambda loader, what: ((b, p) for b, p, _ in run.stream(loader, what)))
        for key, options in run.options.sections.items():
            start = result_sections.SECTIONS[key].start
            p = start(dataclasses.replace(ctx, options=options)) if start is not None else None
            if p is not None:
                self.sections[key] = p

    def _first(self, lp: torch.Tensor) -> None:
        o = self.run.options
        self.task = "classification" if lp.ndim == 2 else "segmentation"
        c = self.num_classes = lp.shape[1]
        self.metrics = streaming(c, o.n_bins, o.ignore_index, full=True, validate=True)
        self.members = [streaming(c, o.n_bins, o.ignore_index) for _ in self.run.members]
        self.class_counts = ClassCounts(c)
        if self.fitted is not None:
            self.calibrated = {k: streaming(c, o.n_bins, o.ignore_index, full=True) for k in self.fitted.by_name}
            ref = self.calibrated.get(self.fitted.reference_name)
            self.reference = ref if ref is not None else streaming(c, o.n_bins, o.ignore_index)
        cap = o.cap(self.task)
        self.sample, self.anomaly = Reservoir(cap, o.seed), Reservoir(cap, o.seed + 1)

    def _warn_unregistered(self, pred) -> None:
        """``pred.scores`` keys that no registered score reads are not compared: say so once."""
        extra = sorted(set(pred.scores) - vocabulary.used_keys() - self._warned)
        if extra:
            self._warned.update(extra)
            warnings.warn(f"{self.run.where}: pred.scores {extra} are not registered scores, so compare does not "
                          "report them; declare each with netuq.scores.register(Score(name, label, compute, ...)) "
                          "to compare it", RuntimeWarning, stacklevel=5)

    def run_over(self, loader) -> TestPass:
        """Stream ``loader`` (labelled test batches) once; returns self."""
        o, fitted = self.run.options, self.fitted
        for batch, pred, member_preds in self.run.stream(loader, "test_loader", members=True,
                                                              labels="classes", anomaly=True):
            if batch.y is None:
                raise ValueError(f"`test_loader` batch {batch.index} has no labels; compare needs labelled test data")
            y = batch.y.cpu()
            lp = pred.log_probs
            if self.task is None:
                self._first(lp)
            elif lp.shape[1] != self.num_classes or (lp.ndim == 2) != (self.task == "classification"):
                raise ValueError(f"`test_loader` batch {batch.index}: prediction shape {tuple(lp.shape)} does not "
                                 f"match the first batch's (·, {self.num_classes}, ...)")
            self.metrics.update(lp.exp(), y)
            if fitted is not None:
                for k, cal in fitted.by_name.items():
                    self.calibrated[k].update(torch.softmax(cal(lp), 1), y)
                if fitted.reference_name not in fitted.by_name:
                    self.reference.update(torch.softmax(fitted.reference(lp), 1), y)
            for member_pred, m in zip(member_preds, self.members):
                m.update(member_pred.probs, y)
            valid = torch.ones_like(y, dtype=torch.bool) if o.ignore_index is None else y != o.ignore_index
            self.class_counts.update(pred.prediction, y, valid)
            self.n_valid += int(valid.sum())
            self.errors += int(((pred.prediction != y) & valid).sum())
            self._warn_unregistered(pred)
            scores = uncertainty_scores(pred, self.run.traits.epistemic, o.scores,
                                        None if fitted is None else fitted.scores)
            for p in self.sections.values():
                p.update(batch, pred, scores)
            positions, flat, L = flat_rows(pred, valid)
            scores = per_row(scores, flat.shape[0] * L)
            anomaly = None if batch.anomaly is None else batch.anomaly.cpu()
            self.sample.offer(positions.numel(),
                              take_rows(flat, L, positions, scores, y=y, anomaly=anomaly, offset=self.images))
            if anomaly is not None:
                apos = anomaly.reshape(-1).nonzero().squeeze(1)
                self.anomaly.offer(apos.numel(), take_rows(flat, L, apos, scores, logits=False))
            if self.task == "segmentation":
                self.examples.offer(batch, y, pred, anomaly, self.run.traits.epistemic)
            self.images += len(y)
        if len(self.sample) == 0:
            raise ValueError("`test_loader` has no valid label (every label equals ignore_index)")
        return self

    def scores(self) -> dict[str, torch.Tensor]:
        """The sampled scores of the test rows, in the vocabulary's display order."""
        return sampled_scores(self.sample, vocabulary.SCORES)
