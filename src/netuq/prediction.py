"""`Prediction`: what every netuq method returns.

A prediction holds the mean predictive distribution p̄ and the running sums needed for the
decomposition *total = aleatoric + epistemic* (Depeweg et al. 2018):

* ``log Σ_s p_s`` kept in log space (``logaddexp``), so ``log_probs`` is exact and finite even
  where a class probability underflows float32 — calibrators can use it as logits;
* ``Σ_s H[p_s]`` (sum of per-sample entropies) for the aleatoric part;
* vote counts of each sample's argmax for the variation ratio;
* for samples added as logits, ``Σ_s E(z_s)`` and ``Σ_s −max_c z_s`` for the logit OOD scores
  (energy, Liu et al. 2020; max-logit, Hendrycks et al. 2022);
* the sample count.

Memory is therefore independent of the number of samples S unless ``keep_samples=True``.
Shapes: (N, C) for classification, (N, C, H, W) (or any (N, C, ...)) for segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

from ._checks import as_tensor, check_log_values, check_probs, float_dtype, sum_tolerance
from .measures import _add_votes, _entropy, _variation_ratio_from_votes

__all__ = ["Prediction", "Statistics"]


class Statistics(NamedTuple):
    """A Prediction's sufficient statistics (:meth:`Prediction.statistics`); one of ``log_sum``
    and ``linear_sum`` is None."""

    count: int
    entropy_sum: torch.Tensor
    votes: torch.Tensor
    log_sum: torch.Tensor | None
    linear_sum: torch.Tensor | None
    samples: torch.Tensor | None
    scores: dict
    energy_sum: torch.Tensor | None = None  # (N, ...) Σ_s energy, when every sample came as logits
    max_logit_sum: torch.Tensor | None = None  # (N, ...) Σ_s −max_c z_s
    features: torch.Tensor | None = None  # (N, D) a layer's features (not a statistic; travels along)


def _check_log_values(x: Any, name: str, *, stacked: bool) -> torch.Tensor:
    """Validate logits or log-probabilities: float, non-empty, no NaN or +Inf.

    -Inf (a masked class, or log 0) is allowed as long as every row has a finite entry over the
    class dimension (dim 1, or dim 2 when ``stacked``).
    """
    return check_log_values(x, name, class_dim=2 if stacked else 1, min_ndim=3 if stacked else 2,
                            what="(k, N, C, ...)" if stacked else "(N, C) or (N, C, ...)")


def _logit_scores(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over the leading sample axis (if ``dim`` is 2) of energy −logsumexp z and of −max z."""
    energy = -torch.logsumexp(z, dim=dim)
    max_logit = -z.amax(dim=dim)
    if dim == 2:
        energy, max_logit = energy.sum(0), max_logit.sum(0)
    return energy, max_logit


class Prediction:
    """Mean predictive distribution plus the sufficient statistics of its uncertainty.

    Build it from one tensor (``Prediction(probs)``, ``Prediction.from_logits(z)``), from stacked
    samples (``Prediction.from_samples(s)``), or incrementally (``Prediction()`` then
    ``add(probs_s)`` / ``add_logits(z_s)`` once per sample or with a leading sample axis).

    Args:
        probs: optional (N, C, ...) probabilities to start from (one sample).
        keep_samples: keep every sample (needed only for ``samples``/``std``); memory grows with S.
        scores: optional method-specific per-example scores, e.g. ``{"confidence": c}`` for a
            learned confidence head or ``{"sigma": σ}`` for a heteroscedastic head, each (N, ...).

    Example:
        >>> pred = Prediction(keep_samples=True)
        >>> pred.add(torch.tensor([[1.0, 0.0]])); pred.add(torch.tensor([[0.0, 1.0]]))
        >>> pred.probs, pred.num_samples
        (tensor([[0.5000, 0.5000]]), 2)
        >>> pred.entropy, pred.aleatoric, pred.epistemic
        (tensor([0.6931]), tensor([0.]), tensor([0.6931]))
    """

    def __init__(
        self,
        probs: torch.Tensor | None = None,
        *,
        keep_samples: bool = False,
        scores: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.keep_samples = bool(keep_samples)
        self.scores: dict[str, torch.Tensor] = dict(scores or {})
        self._log_sum_value: torch.Tensor | None = None  # (N, C, ...) log Σ_s p_s (see _log_sum)
        self._linear_sum: torch.Tensor | None = None  # (N, C, ...) Σ_s p_s when held in linear space
        self._entropy_sum: torch.Tensor | None = None  # (N, ...) Σ_s H[p_s]
        self._votes: torch.Tensor | None = None  # (N, C, ...) int32 argmax counts
        self._energy_sum: torch.Tensor | None = None  # (N, ...) Σ_s −logsumexp_c z_s (samples added as logits)
        self._max_logit_sum: torch.Tensor | None = None  # (N, ...) Σ_s −max_c z_s
        self._logit_count = 0  # samples that came with logits
        #: optional (N, D) features of a named layer, set by the engine when a feature score
        #: (Mahalanobis, :mod:`netuq.detectors`) is asked for; None otherwise
        self.features: torch.Tensor | None = None
        self._samples: list[torch.Tensor] = []
        self._count = 0
        if probs is not None:
            self.add(probs)

    # ------------------------------------------------------------------ the sums
    @property
    def _log_sum(self) -> torch.Tensor | None:
        """(N, C, ...) log Σ_s p_s; taken lazily from ``_linear_sum`` where a merge left the sum in
        linear space (every element at or above :func:`netuq.tta.merges.linear_floor`, so its log
        is exact), which spares ``probs`` a log and an exp of the whole tensor."""
        if self._log_sum_value is None and self._linear_sum is not None:
            self._log_sum_value = torch.log(self._linear_sum)
        return self._log_sum_value

    @_log_sum.setter
    def _log_sum(self, value: torch.Tensor | None) -> None:
        self._log_sum_value, self._linear_sum = value, None

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a Prediction pickled before the sums could be linear (``_log_sum`` held)."""
        if "_log_sum" in state:
            state["_log_sum_value"] = state.pop("_log_sum")
        state.setdefault("_linear_sum", None)
        state.setdefault("_energy_sum", None)
        state.setdefault("_max_logit_sum", None)
        state.setdefault("_logit_count", 0)
        state.setdefault("features", None)
        self.__dict__.update(state)

    def _sum_tensor(self) -> torch.Tensor | None:
        """Whichever sum is held (for shapes, dtypes and the argmax, which both share)."""
        return self._linear_sum if self._linear_sum is not None else self._log_sum_value

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> Prediction:
        """A one-sample prediction from (N, C, ...) logits (softmax over dim 1).

        ``-inf`` marks a masked class (probability 0); every row needs a finite entry.

        Example:
            >>> Prediction.from_logits(torch.tensor([[0.0, 0.0]])).probs
            tensor([[0.5000, 0.5000]])
        """
        pred = cls(**kwargs)
        pred.add_logits(logits)
        return pred

    @classmethod
    def from_statistics(
        cls,
        *,
        count: int,
        entropy_sum: torch.Tensor,
        votes: torch.Tensor,
        log_sum: torch.Tensor | None = None,
        linear_sum: torch.Tensor | None = None,
        samples: torch.Tensor | None = None,
        scores: Mapping[str, torch.Tensor] | None = None,
        energy_sum: torch.Tensor | None = None,
        max_logit_sum: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> Prediction:
        """A prediction holding given sufficient statistics (see :meth:`statistics`), as if its
        ``count`` samples had been added one by one: for code that accumulates them elsewhere
        (TTA's fused merges) or moves them (gathering ranks).

        Args:
            count: the number of samples S (>= 1).
            entropy_sum: (N, ...) Σ_s H[p_s].
            votes: (N, C, ...) integer argmax counts (int32).
            log_sum: (N, C, ...) log Σ_s p_s; or
            linear_sum: (N, C, ...) Σ_s p_s where every element is large enough that its log is
                exact (exactly one of the two).
            samples: (S, N, C, ...) every sample's probabilities (then ``keep_samples`` is True).
            scores: per-example method scores.
            energy_sum, max_logit_sum: (N, ...) the logit scores' sums over the ``count`` samples
                (both or neither: every sample came as logits).
            features: (N, D) features of a layer (``Prediction.features``).

        Example:
            >>> a = Prediction.from_logits(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
            >>> b = Prediction.from_statistics(**a.statistics()._asdict())
            >>> torch.equal(a.probs, b.probs), b.num_samples
            (True, 1)
        """
        if (log_sum is None) == (linear_sum is None):
            raise ValueError("give exactly one of `log_sum` and `linear_sum`")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"`count` must be a positive integer, got {count!r}")
        total = log_sum if log_sum is not None else linear_sum
        name = "log_sum" if log_sum is not None else "linear_sum"
        if not isinstance(total, torch.Tensor) or total.ndim < 2:
            raise ValueError(f"`{name}` must be a tensor (N, C, ...), got {getattr(total, 'shape', type(total))}")
        want = tuple(total.shape[:1] + total.shape[2:])
        if tuple(entropy_sum.shape) != want:
            raise ValueError(f"`entropy_sum` must have shape {want}, got {tuple(entropy_sum.shape)}")
        if tuple(votes.shape) != tuple(total.shape) or votes.is_floating_point():
            raise ValueError(f"`votes` must be integer counts of shape {tuple(total.shape)}, got "
                             f"{tuple(votes.shape)} {votes.dtype}")
        if samples is not None and tuple(samples.shape) != (count, *total.shape):
            raise ValueError(f"`samples` must have shape {(count, *total.shape)}, got {tuple(samples.shape)}")
        pred = cls(keep_samples=samples is not None, scores=scores)
        if linear_sum is not None:
            pred._linear_sum = linear_sum
        else:
            pred._log_sum = log_sum
        pred._entropy_sum, pred._votes, pred._count = entropy_sum, votes, count
        if samples is not None:
            pred._samples = [samples]
        if (energy_sum is None) != (max_logit_sum is None):
            raise ValueError("give both or neither of `energy_sum` and `max_logit_sum`")
        if energy_sum is not None:
            for key, value in (("energy_sum", energy_sum), ("max_logit_sum", max_logit_sum)):
                if tuple(value.shape) != want:
                    raise ValueError(f"`{key}` must have shape {want}, got {tuple(value.shape)}")
            pred._energy_sum, pred._max_logit_sum, pred._logit_count = energy_sum, max_logit_sum, count
        if features is not None:
            if features.ndim != 2 or features.shape[0] != total.shape[0]:
                raise ValueError(f"`features` must have shape ({total.shape[0]}, D), got {tuple(features.shape)}")
            pred.features = features
        return pred

    def statistics(self) -> Statistics:
        """The sufficient statistics (a :class:`Statistics` named tuple): ``count``,
        ``entropy_sum`` (N, ...), ``votes`` (N, C, ...), ``log_sum`` (N, C, ...) log Σ_s p_s,
        ``linear_sum`` (Σ_s p_s where it is held linear, else None), ``samples`` (S, N, C, ...) or
        None, and ``scores``. :meth:`from_statistics` rebuilds the prediction from them."""
        self._require()
        linear = self._linear_sum
        logit = self.has_logit_scores
        return Statistics(self._count, self._entropy_sum, self._votes, None if linear is not None else self._log_sum,
                          linear, self.samples, dict(self.scores), self._energy_sum if logit else None,
                          self._max_logit_sum if logit else None, self.features)

    @classmethod
    def from_samples(cls, samples: torch.Tensor, *, logits: bool = False, **kwargs) -> Prediction:
        """A prediction from stacked (S, N, C, ...) probabilities (or logits with ``logits=True``).

        Example:
            >>> s = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])
            >>> Prediction.from_samples(s).probs
            tensor([[0.7000, 0.3000]])
        """
        pred = cls(**kwargs)
        if logits:
            pred.add_logits(samples, stacked=True)
        else:
            pred.add(samples, stacked=True)
        return pred

    @classmethod
    def cat(cls, predictions: Iterable[Prediction]) -> Prediction:
        """Concatenate predictions of consecutive batches along N.

        Every prediction must hold the same number of samples S, the same shape (·, C, ...) apart
        from N, and live on one device. A key of ``scores`` is kept only if *every* prediction has
        it (others are dropped), and the samples are kept only if every prediction kept them
        (``keep_samples=True``).

        Args:
            predictions: Predictions of shape (N_i, C, ...) each.

        Returns:
            A Prediction of shape (Σ N_i, C, ...).

        Raises:
            TypeError: an element is not a Prediction.
            ValueError: no predictions, different sample counts, shapes or devices.

        Example:
            >>> a, b = Prediction(torch.tensor([[1.0, 0.0]])), Prediction(torch.tensor([[0.2, 0.8]]))
            >>> Prediction.cat([a, b]).probs
            tensor([[1.0000, 0.0000],
                    [0.2000, 0.8000]])
        """
        preds = list(predictions)
        if not preds:
            raise ValueError("`predictions` must contain at least one Prediction, got none")
        for i, p in enumerate(preds):
            if not isinstance(p, Prediction):
                raise TypeError(f"`predictions` must all be Prediction objects, got {type(p).__name__} at position {i}")
        counts = {p._count for p in preds}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"`predictions` must all hold the same (non-zero) number of samples, got {sorted(counts)}")
        first = preds[0]._sum_tensor()
        for i, p in enumerate(preds):
            total = p._sum_tensor()
            if total.shape[1:] != first.shape[1:]:
                want = ", ".join(["·", *map(str, first.shape[1:])])
                raise ValueError(
                    f"`predictions` must all have shape (·, C, ...) = ({want}), "
                    f"got {tuple(total.shape)} at position {i}"
                )
            if total.device != first.device:
                raise ValueError(
                    f"`predictions` must all be on one device, got {first.device} at position 0 and "
                    f"{total.device} at position {i}; move them with .to(device) first"
                )
        out = cls(keep_samples=all(p.keep_samples for p in preds))
        out._count = preds[0]._count
        if all(p._linear_sum is not None for p in preds):  # keep the sums linear (no log)
            out._linear_sum = torch.cat([p._linear_sum for p in preds])
        else:
            out._log_sum = torch.cat([p._log_sum for p in preds])
        out._entropy_sum = torch.cat([p._entropy_sum for p in preds])
        out._votes = torch.cat([p._votes for p in preds])
        if all(p.has_logit_scores for p in preds):
            out._energy_sum = torch.cat([p._energy_sum for p in preds])
            out._max_logit_sum = torch.cat([p._max_logit_sum for p in preds])
            out._logit_count = out._count
        if all(p.features is not None for p in preds):
            out.features = torch.cat([p.features for p in preds])
        if out.keep_samples:
            out._samples = [torch.cat([p.samples for p in preds], dim=1)]
        keys = set.intersection(*(set(p.scores) for p in preds))
        for key in sorted(keys):
            try:
                out.scores[key] = torch.cat([as_tensor(p.scores[key], f"scores[{key!r}]") for p in preds])
            except (RuntimeError, TypeError) as err:
                shapes = [
                    tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                    for v in (p.scores[key] for p in preds)
                ]
                raise ValueError(
                    f"`scores[{key!r}]` must be tensors of shape (N, ...) on one device that concatenate along N, "
                    f"got shapes {shapes}"
                ) from err
        return out

    def add(self, probs: torch.Tensor, *, stacked: bool = False, validate_args: bool = True) -> None:
        """Add one sample of probabilities (N, C, ...), or several (k, N, C, ...) with ``stacked=True``.

        Probabilities are stored through their logarithm, so adding is exact in log space.
        """
        if validate_args:
            probs = check_probs(probs, "probs", dim=2 if stacked else 1, min_ndim=3 if stacked else 2)
        p = probs.to(float_dtype(probs))
        self._accumulate(torch.log(p), p, stacked)

    def add_logits(self, logits: torch.Tensor, *, stacked: bool = False, validate_args: bool = True) -> None:
        """Add one sample of logits (N, C, ...) (softmax over C), or (k, N, C, ...) with ``stacked=True``.

        ``-inf`` entries (masked classes, probability 0) are allowed as long as every row has a
        finite entry over C; NaN and ``+inf`` are rejected.

        Example:
            >>> pred = Prediction()
            >>> pred.add_logits(torch.tensor([[0.0, float("-inf"), 0.0]]))
            >>> pred.probs
            tensor([[0.5000, 0.0000, 0.5000]])
        """
        if validate_args:
            logits = _check_log_values(logits, "logits", stacked=stacked)
        z = logits.to(float_dtype(logits))
        dim = 2 if stacked else 1
        log_p = torch.log_softmax(z, dim=dim)
        energy, max_logit = _logit_scores(z, dim)
        self._accumulate(log_p, log_p.exp(), stacked)
        if self._logit_count == 0 and self._energy_sum is None:
            self._energy_sum, self._max_logit_sum = energy, max_logit
        else:
            self._energy_sum = self._energy_sum + energy if self._energy_sum is not None else None
            self._max_logit_sum = self._max_logit_sum + max_logit if self._max_logit_sum is not None else None
        self._logit_count += logits.shape[0] if stacked else 1

    def add_log_probs(self, log_probs: torch.Tensor, *, stacked: bool = False, validate_args: bool = True) -> None:
        """Add normalised log-probabilities (N, C, ...) (or (k, N, C, ...) with ``stacked=True``).

        ``-inf`` (log 0) is allowed where every row has a finite entry; ``exp`` must sum to 1 over
        C within the dtype's tolerance (``netuq._checks.sum_tolerance``: 1e-3 in float32; more in
        float16/bfloat16, whose rounding of a log-probability moves its exp by up to u·|log p|);
        use ``add_logits`` for unnormalised values.

        Example:
            >>> pred = Prediction()
            >>> pred.add_log_probs(torch.tensor([[0.5, 0.5]]).log())
            >>> pred.probs
            tensor([[0.5000, 0.5000]])
        """
        dim = 2 if stacked else 1
        if validate_args:
            log_probs = _check_log_values(log_probs, "log_probs", stacked=stacked)
        lp = log_probs.to(float_dtype(log_probs))
        p = lp.exp()
        if validate_args:
            tol = sum_tolerance(log_probs.dtype, log_probs.shape[dim], log=True)
            err = float((p.sum(dim) - 1.0).abs().max())
            if err > tol:
                raise ValueError(
                    f"`log_probs` must be normalised: exp(log_probs) must sum to 1 over the class dimension "
                    f"(dim {dim}, tolerance {tol:.4g}), got sums off by up to {err:.4g}; for unnormalised "
                    "values use add_logits"
                )
        self._accumulate(lp, p, stacked)

    def _accumulate(self, log_p: torch.Tensor, p: torch.Tensor, stacked: bool) -> None:
        if not stacked:
            log_p, p = log_p.unsqueeze(0), p.unsqueeze(0)
        k = log_p.shape[0]
        held = self._sum_tensor()
        if held is not None and log_p.shape[1:] != held.shape:
            raise ValueError(
                f"`probs` must have shape {tuple(held.shape)} like the samples already added, "
                f"got shape {tuple(log_p.shape[1:])}"
            )
        chunk_log_sum = log_p[0] if k == 1 else torch.logsumexp(log_p, dim=0)
        chunk_entropy = _entropy(p, 2).sum(0)
        if self._log_sum is None:
            shape = log_p.shape[1:]
            self._log_sum = chunk_log_sum
            self._entropy_sum = chunk_entropy
            self._votes = torch.zeros(shape, dtype=torch.int32, device=log_p.device)
        else:
            self._log_sum = torch.logaddexp(self._log_sum, chunk_log_sum)
            self._entropy_sum = self._entropy_sum + chunk_entropy
        _add_votes(self._votes, log_p)  # the argmax of log p is that of p
        self._count += k
        if self.keep_samples:
            self._samples.append(p.detach())

    # ------------------------------------------------------------------ properties
    def _require(self) -> None:
        if self._count == 0:
            raise ValueError("this Prediction holds no samples yet: call add() or add_logits() first")

    @property
    def num_samples(self) -> int:
        """Number of samples S accumulated so far."""
        return self._count

    @property
    def log_probs(self) -> torch.Tensor:
        """(N, C, ...) log of the mean probabilities, log p̄ = logsumexp_s log p_s − log S.

        Finite wherever some sample gave the class a non-zero probability; usable as logits by
        the calibrators.
        """
        self._require()
        return self._log_sum - math.log(self._count)

    @property
    def probs(self) -> torch.Tensor:
        """(N, C, ...) mean predictive probabilities p̄ = (1/S) Σ_s p_s."""
        if self._linear_sum is not None:
            return self._linear_sum / self._count
        return self.log_probs.exp()

    @property
    def confidence(self) -> torch.Tensor:
        """(N, ...) top-1 probability of p̄."""
        return self.probs.amax(1)

    @property
    def prediction(self) -> torch.Tensor:
        """(N, ...) predicted class, argmax of p̄."""
        self._require()
        return self._sum_tensor().argmax(1)

    @property
    def entropy(self) -> torch.Tensor:
        """(N, ...) total uncertainty H[p̄]."""
        return _entropy(self.probs, 1)

    @property
    def aleatoric(self) -> torch.Tensor:
        """(N, ...) expected entropy E_s H[p_s] (equals ``entropy`` for a single sample)."""
        self._require()
        return self._entropy_sum / self._count

    @property
    def epistemic(self) -> torch.Tensor:
        """(N, ...) mutual information H[p̄] − E_s H[p_s], clamped at 0 (``uncertainty("mutual_information")``).

        Computed from the running sums (the samples are not kept), so it is 0 for identical
        samples only up to rounding (~1e-7 in float32); :func:`netuq.measures.mutual_information`
        on kept samples is exactly 0 there.
        """
        return (self.entropy - self.aleatoric).clamp_min(0.0)

    @property
    def has_logit_scores(self) -> bool:
        """Whether every sample came as logits (``add_logits``), so ``energy`` and ``max_logit`` exist."""
        return self._count > 0 and self._logit_count == self._count and self._energy_sum is not None

    def _logit_score(self, total: torch.Tensor | None, name: str) -> torch.Tensor:
        self._require()
        if not self.has_logit_scores:
            raise ValueError(
                f"`{name}` needs logits: this Prediction holds {self._count - self._logit_count} of {self._count} "
                "sample(s) added as probabilities or log-probabilities; add them with add_logits"
            )
        return total / self._count

    @property
    def energy(self) -> torch.Tensor:
        """(N, ...) energy score, higher = more OOD (Liu et al. 2020, "Energy-based Out-of-distribution Detection").

        E(z) = −T · logsumexp_c(z_c / T) with T = 1, on each sample's logits; for S samples (MC
        dropout, ensembles, heteroscedastic sampling) the mean over samples, (1/S) Σ_s E(z_s) —
        kept as a running sum, so memory does not grow with S. It needs logits: samples added
        as probabilities carry no logit scale (``has_logit_scores``).

        Example:
            >>> Prediction.from_logits(torch.tensor([[0.0, 0.0], [5.0, 0.0]])).energy
            tensor([-0.6931, -5.0067])
        """
        return self._logit_score(self._energy_sum, "energy")

    @property
    def max_logit(self) -> torch.Tensor:
        """(N, ...) max-logit score −max_c z_c, higher = more OOD (Hendrycks et al. 2022, "Scaling
        Out-of-Distribution Detection for Real-World Settings"); for S samples the mean over
        samples of −max_c z_s,c, kept as a running sum like :attr:`energy`.

        Example:
            >>> Prediction.from_samples(torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]]), logits=True).max_logit
            tensor([-3.])
        """
        return self._logit_score(self._max_logit_sum, "max_logit")

    @property
    def variation_ratio(self) -> torch.Tensor:
        """(N, ...) 1 − (votes of the modal class) / S."""
        self._require()
        return _variation_ratio_from_votes(self._votes, self._count, self._sum_tensor().dtype)

    @property
    def samples(self) -> torch.Tensor | None:
        """(S, N, C, ...) every sample's probabilities if ``keep_samples=True``, else None."""
        if not self.keep_samples or not self._samples:
            return None
        if len(self._samples) > 1:
            self._samples = [torch.cat(self._samples, dim=0)]
        return self._samples[0]

    def uncertainty(self, kind: str = "entropy") -> torch.Tensor:
        """An uncertainty score by name, (N, ...), higher = less sure.

        The names are netuq's one vocabulary, :data:`netuq.scores.SCORES`, read at call time (a
        score registered later, by netuq or by a user's script, is accepted): ``"max_prob"`` (1 −
        max p̄), ``"entropy"`` (H[p̄]), ``"mutual_information"`` (H[p̄] − E_s H[p_s]), ``"sigma"``
        (``scores["sigma"]`` of a heteroscedastic head), ``"confidence"`` (1 − ``scores["confidence"]``
        of a learned confidence head), ``"aleatoric"`` (E_s H[p_s]), ``"variation_ratio"``, from logits ``"energy"`` and
        ``"max_logit"`` (see :attr:`energy`), ...
        Any other key of ``scores`` is returned as stored. The old names ``"1-max_prob"``,
        ``"epistemic"`` and ``"1-<key>"`` are refused with the new name.

        Raises:
            ValueError: an unknown or renamed ``kind``, or ``"sigma"`` / ``"confidence"`` on a
                prediction without that score.

        Example:
            >>> pred = Prediction(torch.tensor([[0.75, 0.25]]))
            >>> pred.uncertainty("max_prob")
            tensor([0.2500])
        """
        from . import scores as vocabulary  # read at call time: scores registered later count

        if not isinstance(kind, str):
            raise TypeError(f"`kind` must be a score name (str), got {type(kind).__name__}")
        score = vocabulary.SCORES.get(kind)
        if score is not None and vocabulary.available(score, self, meaning=False):
            return score(self)
        if score is None and kind in self.scores:
            return self.scores[kind]
        new = vocabulary.RENAMED.get(kind) or (kind[2:] if kind.startswith("1-") and kind[2:] in self.scores else None)
        if new is not None:
            raise ValueError(f"`kind` {kind!r} was renamed: use {new!r} (higher = less sure, as every score)")
        registered = list(vocabulary.SCORES.values())
        options = [
            *(s.name for s in registered if not s.uses and vocabulary.available(s, self, meaning=False)),
            *(s.name for s in registered if s.uses and vocabulary.available(s, self, meaning=False)),
            *sorted(k for k in self.scores if k not in vocabulary.SCORES),
        ]
        missing = ""
        if score is not None:
            lacking = [n for n in score.needs if not vocabulary.available(
                vocabulary.Score(kind, "x", lambda p: p, needs=(n,)), self, meaning=False)]
            missing = " (this prediction has no " + ", ".join(
                f"scores[{n[6:]!r}]" if n.startswith("score:") else n for n in lacking) + ")"
        raise ValueError(f"`kind` must be one of {options}{missing}, got {kind!r}")

    def to(self, device: torch.device | str) -> Prediction:
        """Move every tensor to ``device`` (returns self)."""
        for name in ("_log_sum_value", "_linear_sum", "_entropy_sum", "_votes", "_energy_sum", "_max_logit_sum"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self._samples = [s.to(device) for s in self._samples]
        self.scores = {k: v.to(device) for k, v in self.scores.items()}
        if self.features is not None:
            self.features = self.features.to(device)
        return self

    def __len__(self) -> int:
        self._require()
        return self._sum_tensor().shape[0]

    def __repr__(self) -> str:
        total = self._sum_tensor()
        shape = None if total is None else tuple(total.shape)
        return f"Prediction(shape={shape}, num_samples={self._count}, keep_samples={self.keep_samples})"
