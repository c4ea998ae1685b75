"""Split conformal classification: prediction sets with a finite-sample coverage guarantee.

Fit on n labelled calibration points that were not used for training; for a new exchangeable
point, ``1 − α ≤ P(y ∈ set(x))`` and, for continuous scores (the randomised forms, or scores
without ties), ``P(y ∈ set(x)) < 1 − α + 1/(n+1)`` (Vovk et al. 2005; Angelopoulos & Bates 2021).
The guarantee is marginal: over the draw of the calibration set and the new point, not for each
x. With ``class_conditional=True`` (Mondrian conformal, Vovk 2012) it holds within each class.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import as_tensor, check_bool, check_choice, check_ignore_index, check_int, flatten_valid, move_class_last
from .._random import derive_seed, generator
from ..exceptions import NotFittedError
from ._inputs import as_probs64, labels_for
from ._tuning import pick_k_reg, pick_lambda
from .quantile import check_alpha, conformal_quantile, conformal_rank, min_calibration_size
from .scores import SCORES, lac_scores, raps_scores

__all__ = ["SplitConformal"]


def _check_lam(lam: object) -> float | None:
    if lam is None:
        return None
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"`lam` must be a finite number >= 0 or None, got {lam!r}")
    return float(lam)


def _check_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"`tune_fraction` must be a number in (0, 1), got {value!r}")
    return float(value)


class SplitConformal:
    """Split conformal prediction sets for classification: LAC, APS or RAPS scores.

    Shapes: ``x`` (N, C) logits or probabilities, or a :class:`~netuq.Prediction`; labels (N,).
    Segmentation-shaped input (N, C, H, W) is accepted pixel by pixel (sets (N, C, H, W)), but
    pixels of one image are not exchangeable, so no guarantee holds for them: use
    :class:`~netuq.conformal.ConformalRiskControl` there.

    Args:
        score: ``"lac"`` (1 − p_y, Sadinle et al. 2019: the smallest sets on average, may be
            empty), ``"aps"`` (Romano et al. 2020: cumulative sorted mass) or ``"raps"``
            (Angelopoulos et al. 2021: APS plus λ·max(0, rank − k_reg)).
        alpha: miscoverage level in (0, 1): sets contain the label with probability ≥ 1 − α.
        randomized: APS/RAPS only: subtract U·p_y (U ~ Uniform(0, 1), one per example), which
            makes the scores continuous: coverage then also stays below 1 − α + 1/(n+1). Sets
            may be empty.
        class_conditional: one q̂ per class from that class's calibration points (Mondrian):
            coverage ≥ 1 − α within every class; needs n_c ≥ 1/α − 1 points in each class.
        k_reg: RAPS: rank from which the penalty starts (None: chosen on a held-out split).
        lam: RAPS: penalty λ per rank (None: chosen on a held-out split from {0.001, 0.01,
            0.1, 0.2, 0.5} by the smallest mean set size).
        tune_fraction: RAPS with k_reg or lam None: the fraction of the calibration points set
            aside to choose them (0.3 as the paper's code); q̂ comes from the rest.
        seed: seeds the uniforms of the randomised forms and the RAPS tuning split.

    Fitted attributes: ``quantile_`` (q̂, a float, or a (C,) float64 tensor per class with
    ``class_conditional``), ``n_calibration_`` (points behind q̂), ``num_classes_``, and for
    RAPS ``k_reg_`` and ``lam_``.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(500, 4, generator=gen) * 3
        >>> labels = torch.distributions.Categorical(logits=logits).sample()
        >>> cp = SplitConformal(score="aps", alpha=0.1).fit(logits[:250], labels[:250])
        >>> sets = cp.predict(logits[250:])
        >>> sets.shape, sets.dtype
        (torch.Size([250, 4]), torch.bool)
    """

    def __init__(
        self,
        *,
        score: str = "lac",
        alpha: float = 0.1,
        randomized: bool = False,
        class_conditional: bool = False,
        k_reg: int | None = None,
        lam: float | None = None,
        tune_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.score = check_choice(score, "score", SCORES)
        self.alpha = check_alpha(alpha)
        self.randomized = check_bool(randomized, "randomized")
        if randomized and score == "lac":
            raise ValueError("`randomized` must be False for score='lac' (randomisation applies to 'aps' and 'raps')")
        self.class_conditional = check_bool(class_conditional, "class_conditional")
        self.k_reg = check_int(k_reg, "k_reg", 0, allow_none=True)
        self.lam = _check_lam(lam)
        if score != "raps" and (k_reg is not None or lam is not None):
            raise ValueError(f"`k_reg` and `lam` apply to score='raps' only, got score={score!r}")
        self.tune_fraction = _check_fraction(tune_fraction)
        self.seed = check_int(seed, "seed", 0)
        self._predict_calls = 0

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (``type(cp)(**cp.get_params())`` is an unfitted copy)."""
        names = ("score", "alpha", "randomized", "class_conditional", "k_reg", "lam", "tune_fraction", "seed")
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        return f"SplitConformal({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------ scores
    def _uniforms(self, n: int, key: tuple[int, ...], device) -> torch.Tensor | None:
        if not self.randomized:
            return None
        u = torch.rand(n, generator=generator(derive_seed(self.seed, *key)), dtype=torch.float64)
        return u.to(device)

    def _given_uniforms(self, uniforms: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
        """(M,) float64 uniforms from the user's (N, ...) ``uniforms`` (None: draw them)."""
        if uniforms is None:
            return None
        if not self.randomized:
            raise ValueError("`uniforms` apply to randomized=True only, got uniforms with randomized=False")
        u = as_tensor(uniforms, "uniforms")
        if tuple(u.shape) != tuple(shape) or not u.is_floating_point():
            raise ValueError(f"`uniforms` must be floats of shape {tuple(shape)} (one per point), got "
                             f"{u.dtype} of shape {tuple(u.shape)}")
        u = u.to(torch.float64).reshape(-1)
        if not bool(((u >= 0) & (u <= 1)).all()):
            raise ValueError("`uniforms` must be values in [0, 1]")
        return u

    def _scores(self, probs: torch.Tensor, u: torch.Tensor | None, k_reg: int = 0, lam: float = 0.0) -> torch.Tensor:
        if self.score == "lac":
            return lac_scores(probs)
        if self.score == "aps":
            return raps_scores(probs, u, k_reg=0, lam=0.0)
        return raps_scores(probs, u, k_reg=k_reg, lam=lam)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, x: Any, labels: Any, *, ignore_index: int | None = None, input: str = "auto",
            uniforms: Any = None) -> SplitConformal:
        """Calibrate q̂ on held-out points.

        Args:
            x: (N, C) logits or probabilities (see ``input``), or a :class:`~netuq.Prediction`.
            labels: (N,) integer labels in [0, C) or ``ignore_index``.
            ignore_index: label value whose points are left out.
            input: ``"auto"`` (probabilities if every row is in [0, 1] and sums to 1, else
                logits), ``"logits"`` or ``"probs"``.
            uniforms: randomised forms: optional (N,) uniforms U in [0, 1], one per point
                (None: drawn from ``seed``), e.g. to share them with another implementation.

        Returns:
            self.

        Raises:
            ValueError: bad inputs; with ``class_conditional``, a class with fewer than
                1/α − 1 calibration points (q̂ would be +∞ for it).
        """
        probs = as_probs64(x, input=input)
        ignore_index = check_ignore_index(ignore_index)
        y = labels_for(probs, labels, ignore_index)
        u = self._given_uniforms(uniforms, tuple(y.shape))
        if u is not None and ignore_index is not None:
            u = u[y.reshape(-1) != ignore_index]
        p, y = flatten_valid(probs, y, ignore_index)
        if u is None:
            u = self._uniforms(y.numel(), (0,), p.device)
        C = p.shape[1]
        k_reg, lam = self.k_reg, self.lam
        if self.score == "raps" and (k_reg is None or lam is None):
            p, y, u, k_reg, lam = self._tune(p, y, u, k_reg, lam)
        s = self._scores(p, u, k_reg or 0, lam or 0.0).gather(1, y.unsqueeze(1)).squeeze(1)
        if self.class_conditional:
            quantile = self._classwise_quantiles(s, y, C)
        else:
            quantile = conformal_quantile(s, self.alpha)
        self.quantile_ = quantile
        self.n_calibration_ = int(y.numel())
        self.num_classes_ = C
        if self.score == "raps":
            self.k_reg_, self.lam_ = int(k_reg), float(lam)
        self._predict_calls = 0
        return self

    def _tune(self, p, y, u, k_reg, lam):
        m = y.numel()
        n_tune = int(self.tune_fraction * m)
        if n_tune < 1 or m - n_tune < 1:
            raise ValueError(
                f"`x` must hold enough calibration points to set {self.tune_fraction} of them aside for choosing "
                f"RAPS's k_reg / lam (pass both to skip tuning), got {m}"
            )
        perm = torch.randperm(m, generator=generator(derive_seed(self.seed, 2))).to(p.device)
        tune, rest = perm[:n_tune], perm[n_tune:]
        pt, yt = p[tune], y[tune]
        if k_reg is None:
            k_reg = pick_k_reg(pt, yt, self.alpha)
        if lam is None:
            lam = pick_lambda(pt, yt, self.alpha, k_reg, None if u is None else u[tune])
        return p[rest], y[rest], None if u is None else u[rest], k_reg, lam

    def _classwise_quantiles(self, s: torch.Tensor, y: torch.Tensor, C: int) -> torch.Tensor:
        counts = torch.bincount(y, minlength=C).cpu()
        need = min_calibration_size(self.alpha)
        short = [c for c in range(C) if conformal_rank(int(counts[c]), self.alpha) > int(counts[c])]
        if short:
            listed = ", ".join(f"class {c}: {int(counts[c])}" for c in short[:5]) + (", ..." if len(short) > 5 else "")
            raise ValueError(
                f"`labels` must hold at least {need} calibration points of every class for class-conditional "
                f"conformal at alpha={self.alpha} (n_c >= 1/alpha - 1), got {listed}; use more calibration data, "
                "a larger alpha, or class_conditional=False"
            )
        q = torch.empty(C, dtype=torch.float64)
        s_cpu, y_cpu = s.cpu(), y.cpu()
        for c in range(C):
            q[c] = conformal_quantile(s_cpu[y_cpu == c], self.alpha)
        return q

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantile_"):
            raise NotFittedError("this SplitConformal is not fitted yet: call fit(x, labels) before predict")

    def predict(self, x: Any, *, input: str = "auto", seed: int | None = None, uniforms: Any = None) -> torch.Tensor:
        """Prediction sets: a boolean mask of the classes whose score is at most q̂.

        Args:
            x: (N, C) or (N, C, ...) logits or probabilities, or a :class:`~netuq.Prediction`.
            input: as in :meth:`fit`.
            seed: randomised forms: seeds the test uniforms. None draws a new stream on every
                call (from the constructor's seed and a call counter, so a rerun repeats it).
            uniforms: randomised forms: optional (N, ...) uniforms (one per example or pixel)
                instead of drawn ones.

        Returns:
            (N, C) (or (N, C, ...)) bool tensor: ``sets[i, c]`` is True when class c is in the set of i.

        Example:
            >>> cp = SplitConformal(alpha=0.5).fit(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
            >>> cp.predict(torch.tensor([[0.85, 0.15]])).tolist()  # q̂ = 1 − 0.8, the 2nd of 2 scores
            [[True, False]]
        """
        self._check_fitted()
        probs = as_probs64(x, input=input)
        if probs.shape[1] != self.num_classes_:
            raise ValueError(f"`x` must have {self.num_classes_} classes in dim 1 (as in fit), got shape "
                             f"{tuple(probs.shape)}")
        flat = move_class_last(probs)
        u = self._given_uniforms(uniforms, probs.shape[:1] + probs.shape[2:])
        if u is None:
            if seed is None:
                key = (1, self._predict_calls)
                self._predict_calls += 1
            else:
                key = (4, check_int(seed, "seed", 0))
            u = self._uniforms(flat.shape[0], key, flat.device)
        s = self._scores(flat, u, getattr(self, "k_reg_", 0), getattr(self, "lam_", 0.0))
        q = self.quantile_
        sets = s <= (q.to(s.device) if isinstance(q, torch.Tensor) else q)
        if probs.ndim == 2:
            return sets
        N, C = probs.shape[:2]
        return sets.reshape(N, *probs.shape[2:], C).movedim(-1, 1)
