"""The calibrator base class, the registry ``CALIBRATORS`` and the calibrator JSON format.

Every calibrator is a :class:`Calibrator` subclass with a class attribute ``name``; defining the
class registers it in :data:`CALIBRATORS` (``name`` → class), which ``calibration.load``, the
benchmark and ``netuq calibrate --method`` read, and ``CALIBRATORS[name]()`` builds the
recommended configuration. A class describes its own parameters — constructor arguments
(``_param_names``), fitted values and their shapes (``_fitted_shapes``), fit information
(``_info_names``) — and the rules they obey (``_check_fitted_values``, applied after ``fit`` and
when loading), so the persistence below never branches on the class.

Shapes: logits (N, C) with labels (N,), or segmentation logits (N, C, H, W, ...) with labels
(N, H, W, ...); pixels whose label equals ``ignore_index`` are left out of the fit.

Masked classes: logits follow the rule of every entry point (``netuq._checks.check_log_values``):
finite, or -inf for a masked class with a finite entry left in every row. A masked class keeps
probability 0 after calibration — z/T keeps -inf; vector and matrix scaling map a masked entry as
absent (input 0) and set its output back to -inf (:func:`masked_affine`); the step-function
calibrators' outputs are set back to -inf — and a label on a masked class is refused.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._checks import as_tensor, check_labels, check_log_values, flatten_valid, float_dtype, sum_tolerance
from ..exceptions import NotFittedError
from .registry import CALIBRATORS

__all__ = ["CALIBRATORS", "Calibrator"]


FORMAT = "netuq-calibrator"
FORMAT_VERSION = 1

#: Largest magnitude a fitted weight or bias may have (fit and load): beyond it the calibrated
#: logits of ordinary inputs overflow float16/float32 softmax arithmetic.
PARAM_LIMIT = 1e6


# ----------------------------------------------------------------------------- input handling
def check_calibration_logits(logits: Any, *, reject_probs: bool = False) -> torch.Tensor:
    """The logits rule of every entry point (:func:`netuq._checks.check_log_values`), with one
    allocation-free pass (min/max propagate NaN) when all is finite: finite, or -inf for a masked
    class with a finite entry left in every row; no NaN, no +inf.

    With ``reject_probs``, input that looks like probabilities (every value in [0, 1] and every
    row summing to 1 over dim 1) is refused: fitting a calibrator on probabilities is a known
    failure (temperature scaling then runs to its lower bound).
    """
    z = as_tensor(logits, "logits")
    if z.is_floating_point() and z.ndim >= 2 and z.numel():
        lo, hi = torch.aminmax(z)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            if z.shape[1] < 2:
                raise ValueError(f"`logits` must have at least 2 classes (dim 1), got shape {tuple(z.shape)}")
            if reject_probs and float(lo) >= 0.0 and float(hi) <= 1.0:
                _reject_probabilities(z)
            return z
    z = check_log_values(z, "logits")
    if z.shape[1] < 2:
        raise ValueError(f"`logits` must have at least 2 classes (dim 1), got shape {tuple(z.shape)}")
    return z


def masked_classes(z: torch.Tensor) -> torch.Tensor | None:
    """The (N, C, ...) bool mask of -inf (masked) entries of checked logits ``z``, or None if there are none."""
    if bool(torch.isfinite(z.amin())):
        return None
    return torch.isneginf(z)


def masked_affine(fn, z: torch.Tensor, masked: bool | None = None) -> torch.Tensor:
    """``fn(z)`` for an affine map of logits, with masked (-inf) classes kept masked.

    A masked input entry enters the map as 0 (the class is absent, it carries no evidence) and the
    same entry of the output is -inf again, so a masked class keeps probability 0 after vector or
    matrix scaling (a plain affine map would give NaN from 0·(-inf) or mix -inf into other classes).
    ``masked=False`` (known from the fit data) skips the check: the fits' objectives run it per step.

    Example:
        >>> masked_affine(lambda t: 2 * t + 1, torch.tensor([[0.0, float("-inf")]]))
        tensor([[1., -inf]])
    """
    if masked is False:
        return fn(z)
    mask = masked_classes(z)
    if mask is None:
        return fn(z)
    return fn(z.masked_fill(mask, 0.0)).masked_fill(mask, -math.inf)


def _reject_probabilities(z: torch.Tensor) -> None:
    """Raise if every row of (N, C, ...) ``z`` (values already known to be in [0, 1]) sums to 1 over dim 1."""
    tol = sum_tolerance(z.dtype, z.shape[1])  # the tolerance of check_probs: by dtype
    err = float((z.sum(dim=1, dtype=float_dtype(z)) - 1.0).abs().max())
    if err <= tol:
        raise ValueError(
            "`logits` look like probabilities (every row in [0, 1] sums to 1); pass logits, or log(probs) "
            "for a sampling method's mean prediction (Prediction.log_probs)"
        )


def _prepare(logits, labels, ignore_index, max_samples, seed):
    """Validate and flatten to (M, C) compute-dtype logits, (M,) labels, (M,) image index."""
    z = check_calibration_logits(logits, reject_probs=True)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"`ignore_index` must be an int or None, got {type(ignore_index).__name__}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(f"`max_samples` must be a positive integer or None, got {max_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    y = check_labels(labels, z.shape[1], z.shape[:1] + z.shape[2:], ignore_index=ignore_index, probs_name="logits")
    y = y.to(z.device)
    # Image index of every label, flattened in the same (N, H, W, ...) order as flatten_valid.
    image = torch.arange(z.shape[0], device=z.device).view(-1, *([1] * (y.ndim - 1))).expand_as(y).reshape(-1)
    zf, yf = flatten_valid(z, y, ignore_index)
    if not bool(torch.isfinite(zf.amin())):
        bad = int(torch.isneginf(zf.gather(1, yf.unsqueeze(1))).sum())
        if bad:
            raise ValueError(
                f"`labels` must not name a masked class: {bad} label(s) fall on a class whose logit is -inf "
                "(probability 0, an infinite NLL)"
            )
    if ignore_index is not None:
        image = image[y.reshape(-1) != ignore_index]
    if max_samples is not None and yf.numel() > max_samples:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(yf.numel(), generator=gen)[:max_samples].sort().values.to(z.device)
        zf, yf, image = zf[keep], yf[keep], image[keep]
    zf = zf.to(float_dtype(z))
    if zf.is_inference():
        zf = zf.clone()  # inference tensors cannot be saved for backward (L-BFGS fits)
    owned = zf.untyped_storage().data_ptr() != z.untyped_storage().data_ptr()
    return zf, yf, image, owned


def check_positive_float(value, name: str) -> float:
    """``value`` as a float after checking it is a finite number > 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def nll64(out: torch.Tensor, y: torch.Tensor) -> float:
    """Mean NLL of logits ``out`` (M, C) for labels ``y``, in float64 (float32 on MPS, on the CPU)."""
    if out.device.type == "mps":  # no float64 there
        out, y = out.cpu(), y.cpu()
    return float(F.cross_entropy(out.to(torch.float64), y))


def separable_smoothing(n: int) -> float:
    """ε = 1/(n+2): the smoothed target 1 − ε on the label used when the fit data are separable.

    Platt (1999) fits a sigmoid to targets (N₊+1)/(N₊+2) instead of 1 for this reason: with every
    fit prediction correct the maximum-likelihood temperature is 0 (infinitely confident), and one
    held-out error then costs an unbounded NLL. (n+1)/(n+2) is Laplace's rule of succession — the
    posterior mean accuracy after n correct predictions in n under a uniform prior.
    """
    return 1.0 / (n + 2)


# ----------------------------------------------------------------------------- base class
class Calibrator:
    """Base class: scikit-learn-style ``fit`` plus ``__call__`` returning calibrated logits.

    A subclass sets ``name`` (registered in :data:`CALIBRATORS`; leave it unset for abstract
    intermediate classes) and defines ``_fit(z, y, image, seed, owned)`` on flattened (M, C)
    logits (``owned``: ``z`` is a private copy that may be overwritten), ``_transform(z)`` on
    (N, C, ...) logits in the compute dtype, ``_param_names`` (constructor arguments),
    ``_fitted_shapes(C)`` (fitted attributes and their shapes, () for a float), ``_info_names``
    (fit information) and, where its fit obeys rules beyond finiteness, ``_check_fitted_values``.
    It may also set ``label``, ``order`` and ``changes_prediction`` (see
    :mod:`netuq.calibration.registry`).
    """

    name: ClassVar[str | None] = None
    #: display label (report, CLI); default: the name with spaces for underscores
    label: ClassVar[str | None] = None
    #: display position among the calibrators (lower first; ties keep registration order)
    order: ClassVar[float] = 100
    #: whether the calibrated argmax can differ from the uncalibrated one (the predicted class
    #: changes): temperature scaling and top-label histogram binning keep it; vector / matrix
    #: scaling and isotonic regression can change it. True unless a class states otherwise
    changes_prediction: ClassVar[bool] = True
    _param_names: ClassVar[tuple[str, ...]] = ()
    #: constructor arguments added after format version 1 files were first written, with the
    #: value that reproduces how such an older file was fitted (used when a file lacks them)
    _params_added: ClassVar[dict[str, Any]] = {}
    _info_names: ClassVar[tuple[str, ...]] = (
        "n_samples_", "nll_before_", "nll_after_", "n_iter_", "n_passes_", "converged_",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__}.name must be a non-empty string, got {name!r}")
        other = CALIBRATORS.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"calibrator name {name!r} is taken by {other.__qualname__}")
        clash = [c for c in CALIBRATORS.values() if c.__name__ == cls.__name__ and c.name != name]
        if clash:
            raise ValueError(f"calibrator class name {cls.__name__!r} is already registered as {clash[0].name!r}")
        CALIBRATORS[name] = cls

    # -------------------------------------------------------------- sklearn-like plumbing
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, so that ``type(c)(**c.get_params())`` is an unfitted copy."""
        return {name: getattr(self, name) for name in self._param_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load``) has set the fitted attributes."""
        return hasattr(self, "num_classes_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(logits, labels) before using it"
            )

    # -------------------------------------------------------------- fit / apply
    def fit(
        self,
        logits,
        labels,
        *,
        ignore_index: int | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> Calibrator:
        """Fit on held-out logits by minimising the NLL.

        Args:
            logits: (N, C) or (N, C, H, W, ...) logits (not probabilities) collected in eval mode;
                -inf marks a masked class (probability 0, kept at 0 after calibration).
            labels: (N,) or (N, H, W, ...) integer labels in [0, C) or ``ignore_index``.
            ignore_index: label value whose pixels are left out of the fit.
            max_samples: fit on a uniform random subsample of at most this many valid pixels
                (rows), drawn with ``seed`` — useful for large segmentation sets.
            seed: seed of that subsample (and of any inner cross-validation split).

        Returns:
            self, with the fitted attributes (ending in ``_``) set.
        """
        # inference_mode(False): logits collected under torch.inference_mode are cloned into normal
        # tensors, which autograd (the L-BFGS fits) may save for backward.
        with torch.inference_mode(False):
            z, y, image, owned = _prepare(logits, labels, ignore_index, max_samples, seed)
            self._check_memory(int(y.numel()), int(z.shape[1]))  # a size this machine cannot hold: refused now
            if int(torch.unique(y).numel()) < 2:
                warnings.warn(
                    f"{type(self).__name__}: the labels hold a single class ({int(y[0])}); the fit is degenerate "
                    "and the calibrated probabilities are pushed towards that class",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._clear_fit()
            self.num_classes_ = int(z.shape[1])
            self.n_samples_ = int(y.numel())
            self._fit_masked = not bool(torch.isfinite(z.amin()))  # a masked class (-inf) in the fit data
            self._fit(z, y, image, seed, owned)
        problem = self._check_fitted_values()
        if problem is not None:  # the solvers keep to these rules; never hand out such a fit
            self._clear_fit()
            raise ValueError(f"{type(self).__name__}: the fit produced invalid parameters: {problem}")
        return self

    def _check_memory(self, n_samples: int, num_classes: int) -> None:
        """Raise :class:`~netuq.exceptions.NotEnoughMemoryError` before fitting if the fit cannot fit in memory.

        The default does nothing (the fit needs little beyond its input); calibrators whose fit
        grows faster (vector and matrix scaling) check their own estimate.
        """

    def _clear_fit(self) -> None:
        fit_state = ("num_classes_", "_cache", "_ts_status", "_scale", "_fit_masked")
        for name in (*self._info_names, *self._fitted_shapes(0), *fit_state):
            self.__dict__.pop(name, None)

    def _fit(self, z: torch.Tensor, y: torch.Tensor, image, seed: int, owned: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _transform(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _fitted_shapes(self, num_classes: int) -> dict[str, tuple[int | None, ...]]:  # pragma: no cover
        """{fitted attribute: shape} for C = ``num_classes``; shape () is a Python float.

        ``None`` in a shape is a length fixed by the fit, not by C (the breakpoints of a
        non-parametric calibrator); the class's ``_check_fitted_values`` relates such lengths.
        """
        raise NotImplementedError

    def _check_fitted_values(self) -> str | None:
        """None if the fitted values obey the rules of ``fit``, else what is wrong (one phrase).

        The base rule: every fitted value has its shape and is finite, and every fitted tensor entry
        is at most :data:`PARAM_LIMIT` in magnitude (scalars such as T have their own bounds).
        """
        for name, shape in self._fitted_shapes(self.num_classes_).items():
            value = getattr(self, name)
            t = torch.as_tensor(value, dtype=torch.float64)
            if not shape_matches(tuple(t.shape), shape):
                return f"`{name.rstrip('_')}` must have shape {shape}, got {tuple(t.shape)}"
            if not bool(torch.isfinite(t).all()):
                return f"`{name.rstrip('_')}` must be finite"
            if shape != () and t.numel() and float(t.abs().max()) > PARAM_LIMIT:
                top = float(t.abs().max())
                return f"`{name.rstrip('_')}` must be at most {PARAM_LIMIT:g} in magnitude, got {top!r}"
        return None

    def _param(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A fitted tensor on ``like``'s device and dtype (cached per device and dtype)."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            cache[key] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        return cache[key]

    def _validated_input(self, logits) -> torch.Tensor:
        self._check_fitted()
        z = check_calibration_logits(logits)
        if z.shape[1] != self.num_classes_:
            raise ValueError(
                f"`logits` must have {self.num_classes_} classes (dim 1) like the data {type(self).__name__} "
                f"was fitted on, got shape {tuple(z.shape)}"
            )
        return z

    def __call__(self, logits) -> torch.Tensor:
        """Calibrated logits, a new tensor of the input's shape, device and dtype.

        Args:
            logits: (N, C) or (N, C, H, W, ...) logits.

        Returns:
            (N, C, ...) calibrated logits; take ``.softmax(1)`` for probabilities.
        """
        z = self._validated_input(logits)
        with torch.no_grad():
            return self._masked_transform(z.to(float_dtype(z))).to(z.dtype)

    def predict_proba(self, logits) -> torch.Tensor:
        """Calibrated probabilities softmax(calibrated logits) over dim 1, shape (N, C, ...).

        Half-precision input is computed in float32 and returned in its own dtype.
        """
        z = self._validated_input(logits)
        with torch.no_grad():
            return torch.softmax(self._masked_transform(z.to(float_dtype(z))), dim=1).to(z.dtype)

    def _masked_transform(self, z: torch.Tensor) -> torch.Tensor:
        """``_transform``, with every masked (-inf) input class -inf in the output (probability 0)."""
        out = self._transform(z)
        mask = masked_classes(z)
        return out if mask is None else out.masked_fill(mask, -math.inf)

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain-data description (class, constructor arguments, parameters, fit information)."""
        self._check_fitted()
        params = {k: _jsonable(v) for k, v in self.get_params().items()}
        fitted = {}
        for name, shape in self._fitted_shapes(self.num_classes_).items():
            value = getattr(self, name)
            fitted[name.rstrip("_")] = float(value) if shape == () else value.to(torch.float64).tolist()
        info = {name.rstrip("_"): self._info_to_json(name, getattr(self, name))
                for name in self._info_names if hasattr(self, name)}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": params,
            "num_classes": self.num_classes_,
            "fitted": fitted,
            "fit_info": info,
        }

    def _info_to_json(self, name: str, value: Any) -> Any:
        return _jsonable(value)

    @classmethod
    def _param_from_json(cls, name: str, value: Any) -> Any:
        """A constructor argument as read from JSON (lists back to tuples where the class wants them)."""
        return value

    def _info_from_json(self, name: str, value: Any) -> Any:
        """A fit-information value as read from JSON, validated; raise ValueError naming the problem."""
        if name in ("n_samples_", "n_iter_", "n_passes_"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"must be an integer >= 0, got {value!r}")
        elif name in ("nll_before_", "nll_after_"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"must be a finite number >= 0, got {value!r}")
            value = float(value)
        elif name == "converged_" and not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    def save(self, path: str | Path) -> Path:
        """Write the fitted calibrator to one JSON file, atomically (floats round-trip exactly).

        Example:
            >>> import tempfile, os
            >>> from netuq.calibration import TemperatureScaling, load
            >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
            >>> ts = TemperatureScaling().fit(z, torch.tensor([0, 1, 1]))
            >>> path = ts.save(os.path.join(tempfile.mkdtemp(), "ts.json"))
            >>> load(path).temperature_ == ts.temperature_
            True
        """
        import json

        from .._files import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path


def shape_matches(found: tuple[int, ...], shape: tuple[int | None, ...]) -> bool:
    """Whether ``found`` is ``shape``, where a ``None`` entry of ``shape`` matches any length."""
    return len(found) == len(shape) and all(s is None or f == s for f, s in zip(found, shape))


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
