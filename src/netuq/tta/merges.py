"""Merging the views: streaming sums over views, in place, with memory independent of the view count.

:class:`ViewAccumulator` receives each view's (or block of views') probabilities p (k, N, C, ...),
per-pixel entropies H[p] (k, N, ...) and one-hot argmax masks, already in the input frame, and
keeps what :class:`netuq.Prediction` needs: log Σ_v p_v, Σ_v H[p_v], the vote counts and V. For
``merge`` other than "mean" it also keeps the merged distribution's accumulator (log space):

* ``"gmean"``: Σ_v log p_v (then divided by V and renormalised over classes);
* ``"max"``: max_v log p_v (renormalised);
* ``"tsharpen"``: log Σ_v p_v^t with t = :data:`TSHARPEN_T` (minus log V, renormalised).

log Σ_v p_v is exact where a class probability underflows: :class:`LogSum` adds in linear space
(one in-place add per view, the cost of ttach's merge) and keeps the elements whose running sum
is below :func:`linear_floor` after the first view in log space (``logaddexp``), so the result is
log Σ_v p_v to rounding everywhere, even for a class at 1e-300 in every view.

Example:
    >>> acc = LogSum((1, 2), torch.float32, torch.device("cpu"), views=2)
    >>> log_p = torch.tensor([[0.0, -200.0]])              # exp(-200) underflows float32
    >>> acc.add(log_p.exp(), lambda: log_p); acc.add(log_p.exp(), lambda: log_p)
    >>> acc.result() - math.log(2)                        # log of the mean: finite and exact
    tensor([[   0., -200.]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..prediction import Prediction

__all__ = ["MERGES", "TSHARPEN_T", "LogSum", "ViewAccumulator", "linear_floor", "softmax_parts"]

MERGES = ("mean", "gmean", "max", "tsharpen")
TSHARPEN_T = 0.5

# Above this fraction of elements below the floor after the first view, the whole sum is kept in
# log space (one logaddexp per view) instead of gathering the small elements.
_LOG_SPACE_FRACTION = 1 / 8


def linear_floor(dtype: torch.dtype) -> float:
    """Smallest sum kept in linear space: tiny / eps (1e-31 in float32, 1e-292 in float64).

    Terms below the smallest normal number carry an absolute error under tiny·eps, which is below
    eps relative to a sum of at least this floor, so ``log(sum)`` is exact to rounding above it.
    """
    info = torch.finfo(dtype)
    return info.tiny / info.eps


class _Sum:
    """An in-place running sum whose buffer follows the layout of what is added.

    De-augmenting a 90° rotation gives a transposed (non-contiguous) tensor, and adding one into a
    contiguous buffer costs ~5x a contiguous add. Such terms go to a second, transposed buffer
    (same strides: a contiguous pass); the two are summed once in :meth:`total`. Each buffer
    starts as its first term (a copy, or the term itself with ``own=True``: no zero fill and add).
    """

    def __init__(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.plain: torch.Tensor | None = None
        self.flipped: torch.Tensor | None = None  # stored (..., W, H); used through .mT

    @staticmethod
    def _transposed(y: torch.Tensor) -> bool:
        return y.ndim >= 2 and not y.is_contiguous() and y.mT.is_contiguous()

    def add_(self, y: torch.Tensor, *, own: bool = False, transposed: bool | None = None) -> None:
        """Add ``y``. ``transposed=True``: ``y`` is the term in the transposed frame, (..., W, H)
        (added to the transposed buffer as it is); None: a transposed view is recognised by its
        strides. ``own=True``: the caller gives ``y`` up (the sum may keep it as its buffer)."""
        if transposed is None:
            transposed = self._transposed(y)
            y = y.mT if transposed else y
        if self._first(y, own, transposed):
            return
        (self.flipped if transposed else self.plain).add_(y)

    def addcdiv_(self, y: torch.Tensor, d: torch.Tensor, *, value: float = 1.0, transposed: bool | None = None) -> None:
        """Add ``value * y / d`` (``d`` broadcast, e.g. the softmax denominators) in one pass;
        ``transposed`` as in :meth:`add_` (for both ``y`` and ``d``)."""
        if transposed is None:
            transposed = self._transposed(y)
            y, d = (y.mT, d.mT) if transposed else (y, d)
        target = self.flipped if transposed else self.plain
        if target is None:
            first = torch.div(y, d)
            self._first(first if value == 1 else first.mul_(value), True, transposed)
        else:
            target.addcdiv_(y, d, value=value)

    def _first(self, y: torch.Tensor, own: bool, transposed: bool) -> bool:
        """Start the buffer of this frame with ``y`` if it is empty; whether it was."""
        if (self.flipped if transposed else self.plain) is not None:
            return False
        keep = own and y.dtype == self.dtype and _dense(y)
        # the term's own layout when dense (channels-last logits: later terms add in one pass)
        y = y if keep else y.to(self.dtype, memory_format=torch.preserve_format, copy=True)
        if transposed:
            self.flipped = y
        else:
            self.plain = y
        return True

    def total(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The sum (contiguous, in ``dtype``, default the sum's); the buffers are consumed."""
        dtype = self.dtype if dtype is None else dtype
        if self.plain is None and self.flipped is None:
            return torch.zeros(self.shape, dtype=dtype, device=self.device)
        if self.flipped is None:
            out = _contiguous(self.plain, dtype)
        elif self.flipped.is_contiguous() and (self.plain is None or self.plain.is_contiguous()):
            # the transposed part read as (-1, W, H) planes: ~2x faster than through the N-d view
            h, w = self.shape[-2:]
            part = self.flipped.reshape(-1, w, h).transpose(1, 2)
            if self.plain is None:
                out = _contiguous(part, dtype).view(self.shape)
            else:
                out = _contiguous(self.plain, dtype)
                out.view(-1, h, w).add_(part)
        else:  # channels-last buffers: one strided pass into the contiguous result
            out = _contiguous(self.flipped.mT, dtype)
            if self.plain is not None:
                out.add_(self.plain)
        self.plain, self.flipped, self.dtype = out, None, dtype
        return out


class LogSum:
    """log Σ_v q_v for q_v ≥ 0 given one (or a block) at a time, exact where the sum underflows.

    Args:
        shape: shape of each q_v.
        dtype, device: of the sums.
        views: the number of additions to come; with one, the log values are kept as given (so a
            single identity view reproduces the model's ``log_softmax`` bit for bit).
    """

    def __init__(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device, *, views: int) -> None:
        self.views = int(views)
        self.linear = _Sum(shape, dtype, device)
        self.mode = "log" if self.views == 1 else "new"  # then "linear", "gather" or "log"
        self.logs: torch.Tensor | None = None  # the log-space part ("gather": 1-D; "log": full)
        self.index: torch.Tensor | None = None  # "gather": flat indices of the small elements

    def add(self, q: torch.Tensor, log_q: Callable[[], torch.Tensor], *, own: bool = False) -> None:
        """Add q (shape ``shape``); ``log_q()`` returns log q and is called only when needed;
        ``own=True``: the caller gives ``q`` up (the sum may keep it as its buffer)."""
        if self.mode == "log":
            self.logs = _combine(torch.logaddexp, self.logs, log_q())
            return
        self.linear.add_(q, own=own)
        if self.mode == "gather":
            self.logs = _combine(torch.logaddexp, self.logs, log_q().reshape(-1).index_select(0, self.index))
        elif self.mode == "new":
            self._choose_mode(q, log_q)

    def linear_total(self) -> torch.Tensor | None:
        """Σ_v q_v in linear space when every element stayed above the floor (its log is then
        exact, see :func:`linear_floor`), else None."""
        return self.linear.total() if self.mode == "linear" else None

    def _choose_mode(self, q: torch.Tensor, log_q: Callable[[], torch.Tensor]) -> None:
        """After the first addition (the sum is q): which elements must stay in log space."""
        floor = linear_floor(q.dtype)
        if not bool(q.amin() < floor):  # every sum already above the floor: it stays there
            self.mode = "linear"
            return
        small = (q < floor).reshape(-1)
        count = int(small.sum())
        if count > _LOG_SPACE_FRACTION * small.numel():
            self.mode, self.logs = "log", log_q().contiguous().clone()
        else:
            self.mode = "gather"
            self.index = small.nonzero().squeeze(1)
            self.logs = log_q().reshape(-1).index_select(0, self.index)

    def result(self) -> torch.Tensor:
        """log Σ_v q_v (a new tensor)."""
        if self.mode == "log":
            return self.logs
        out = torch.log(self.linear.total())
        if self.mode == "gather":
            out.view(-1).index_copy_(0, self.index, self.logs)
        return out


class ViewAccumulator:
    """The running sums of one batch over its views (see the module docstring).

    Args:
        shape: (N, C, ...) of one view's probabilities in the input frame.
        dtype, device: of the sums.
        views: V, the number of views to come.
        merge: one of :data:`MERGES`.
        keep_samples: also keep every view's probabilities, in view order.
    """

    def __init__(
        self,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        *,
        views: int,
        merge: str = "mean",
        keep_samples: bool = False,
    ) -> None:
        shape = tuple(shape)
        self.shape, self.views, self.merge, self.count = shape, int(views), merge, 0
        self.log_sum = LogSum(shape, dtype, device, views=views)
        self.entropy_sum = _Sum(shape[:1] + (1,) + shape[2:], dtype, device)  # (N, 1, ...): like Σ_c
        # argmax counts: uint8 while they fit (adds 3x faster than int32), int32 in the Prediction
        self.votes = _Sum(shape, torch.uint8 if views <= 255 else torch.int32, device)
        self._votes_total: torch.Tensor | None = None
        self.samples = torch.empty((views, *shape), dtype=dtype, device=device) if keep_samples else None
        self.merged: torch.Tensor | LogSum | None = None
        if merge == "tsharpen":
            self.merged = LogSum(shape, dtype, device, views=views)

    def add(
        self,
        probs: torch.Tensor,
        entropy: torch.Tensor,
        argmax: torch.Tensor,
        log_probs: Callable[[], torch.Tensor],
        index: Sequence[int],
        *,
        stacked: bool = False,
    ) -> None:
        """Add one view (or k views with ``stacked=True``: a leading view axis), in the input frame.

        Args:
            probs: (N, C, ...) probabilities, or (k, N, C, ...).
            entropy: (N, ...) their entropies H[p], or (k, N, ...).
            argmax: (N, C, ...) bool, one True per pixel at the view's predicted class, or (k, ...).
                Not checked here: :meth:`one_vote_each_and_finite` checks the sums once at the end.
            log_probs: returns the log-probabilities (the shape of ``probs``); called only where
                needed (merges other than "mean", or classes whose probability underflows).
            index: the views' positions in the Compose (the order of ``samples``).
            stacked: whether the tensors have the leading view axis.
        """
        shape = tuple(probs.shape[1:] if stacked else probs.shape)
        if shape != self.shape:
            want = ", ".join(map(str, self.shape))
            raise ValueError(f"`probs` must have shape ({'k, ' if stacked else ''}{want}), got {tuple(probs.shape)}")
        cache: list[torch.Tensor] = []

        def logs() -> torch.Tensor:
            if not cache:
                cache.append(log_probs())
            return cache[0]

        if not stacked:
            self.log_sum.add(probs, logs)
            self.entropy_sum.add_(entropy.unsqueeze(1))
            self._add_votes(argmax)
            if self.samples is not None:
                self.samples[index[0]].copy_(probs)
        else:
            self.log_sum.add(probs.sum(0), lambda: torch.logsumexp(logs(), 0))
            self.entropy_sum.add_(entropy.sum(0).unsqueeze(1))
            self.votes.add_(argmax.sum(0, dtype=self.votes.dtype))
            if self.samples is not None:
                self.samples[list(index)] = probs
        if self.merge == "gmean":
            part = logs().sum(0) if stacked else logs()
            self.merged = part.clone() if self.merged is None else self.merged.add_(part)
        elif self.merge == "max":
            self.merged = _combine(torch.maximum, self.merged, logs().amax(0) if stacked else logs())
        elif self.merge == "tsharpen":
            scaled = TSHARPEN_T * logs()
            if stacked:
                self.merged.add(scaled.exp().sum(0), lambda: torch.logsumexp(scaled, 0))
            else:
                self.merged.add(scaled.exp(), lambda: scaled)
        self.count += probs.shape[0] if stacked else 1

    def add_logits(
        self,
        z: torch.Tensor,
        index: Sequence[int],
        *,
        transposed: bool = False,
        own: bool = False,
        buffer: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        """Add one view from its logits, in the fast pass of :class:`netuq.TTA`: no finiteness or
        tie check per view (:meth:`one_vote_each_and_finite` checks the sums once at the end).

        With s = z − max_c z, e = exp(s) and S = Σ_c e: p = e / S, H[p] = log S − Σ_c e·s / S
        (two non-negative terms) and the argmax mask s == 0. For ``merge="mean"`` without kept
        samples, once the first view has shown that no probability underflows, the divisions are
        fused into the running sums (``addcdiv_``); otherwise the probabilities go to :meth:`add`.

        Args:
            z: (N, C, ...) logits of one view in the input frame, contiguous; or with
                ``transposed=True`` those of the transposed frame (..., W, H), contiguous (a
                rotated view: the sums keep such terms in transposed buffers, contiguous adds).
            index: the view's position in the Compose.
            own: ``z`` is the caller's to overwrite (a fresh de-augmented copy): the shifted
                logits are computed in place (right after the forward, the model's activations
                have left the caches; every buffer touched then is a cache miss).
            buffer: ``buffer(name, like, dtype=None)`` returns a reusable tensor like ``like``
                (:class:`netuq.tta.wrapper._Workspace`); default: fresh tensors.
        """
        if buffer is None:
            buffer = _fresh
        shape = tuple(z.shape[:-2]) + tuple(z.shape[-2:][::-1]) if transposed else tuple(z.shape)
        if shape != self.shape:
            raise ValueError(f"`z` must have shape ({', '.join(map(str, self.shape))}), got {shape}")
        s, e, total, mask = softmax_parts(z, buffer, own=own)
        log_total = total.log()
        if self.merge == "mean" and self.samples is None and self.log_sum.mode == "linear":
            weighted = s.mul_(e).sum(1, keepdim=True)  # Σ_c e·s <= 0; s is not needed after it
            self.log_sum.linear.addcdiv_(e, total, transposed=transposed)
            self._add_votes(mask, transposed=transposed)
            self.entropy_sum.add_(log_total, transposed=transposed)
            self.entropy_sum.addcdiv_(weighted, total, value=-1.0, transposed=transposed)
            self.count += 1
            return
        weighted = (s * e).sum(1, keepdim=True)  # s stays: the merges below may need log p = s - log S
        frame = (lambda y: y.mT) if transposed else (lambda y: y)
        probs, entropy = frame(e / total), frame(log_total - weighted / total).squeeze(1)
        self.add(probs, entropy, frame(mask), lambda: frame(s - log_total), index)

    def _add_votes(self, argmax: torch.Tensor, *, transposed: bool | None = None) -> None:
        self.votes.add_(argmax.view(torch.uint8) if self.votes.dtype == torch.uint8 else argmax, transposed=transposed)

    def _votes(self) -> torch.Tensor:
        """The vote counts, int32 (what Prediction holds)."""
        if self._votes_total is None:
            self._votes_total = self.votes.total(torch.int32)
        return self._votes_total

    def one_vote_each_and_finite(self) -> bool:
        """Whether every pixel got exactly one vote per view (no argmax ties) and every entropy
        is finite (NaN or ±inf logits make it NaN): what the fast pass of :class:`netuq.TTA`
        leaves unchecked per view. One device sync."""
        # finite entropies mean finite logits, so every view gave each pixel at least one vote: the
        # count is exactly one per pixel and view iff the total number of votes is
        # (sums: NaN and inf propagate into the entropies' sum, which cannot overflow: H <= V log C)
        parts = (self.votes.plain, self.votes.flipped)
        votes = sum(part.sum(dtype=torch.int64) for part in parts if part is not None)
        pixels = math.prod(self.shape) // self.shape[1] if self.shape[1] else 0
        ok = torch.isfinite(self.entropy_sum.total().sum()) & (votes == self.count * pixels)
        return bool(ok)

    def prediction(self) -> Prediction:
        """The Prediction: the views as samples ("mean"), or the merged distribution with the
        decomposition across views as ``scores`` (other merges)."""
        if self.count != self.views:
            raise RuntimeError(f"expected {self.views} views, got {self.count}")
        entropy = self.entropy_sum.total().squeeze(1)
        views = _prediction_from_sums(self.log_sum, entropy, self._votes(), self.count, self.samples)
        if self.merge == "mean":
            return views
        acc = self.merged.result() if isinstance(self.merged, LogSum) else self.merged
        if self.merge == "gmean":
            acc = acc / self.count
        elif self.merge == "tsharpen":
            acc = acc - math.log(self.count)
        acc = _contiguous(acc, acc.dtype)  # channels-last views: the first term's layout (see _Sum)
        out = Prediction(
            scores={
                "view_aleatoric": views.aleatoric,
                "view_epistemic": views.epistemic,
                "view_variation_ratio": views.variation_ratio,
            }
        )
        out.add_log_probs(acc - torch.logsumexp(acc, dim=1, keepdim=True), validate_args=False)
        return out


def _combine(op: Callable, acc: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``op(acc, value)`` into ``acc`` (a copy of ``value`` when there is no ``acc`` yet); out of
    place where autograd records them, since it refuses ``out=``."""
    if acc is None:
        return value.clone()
    if torch.is_grad_enabled() and (acc.requires_grad or value.requires_grad):
        return op(acc, value)
    return op(acc, value, out=acc)


def _dense(y: torch.Tensor) -> bool:
    """Whether ``y`` covers its memory without gaps in a standard layout (contiguous or channels-last)."""
    return y.is_contiguous() or (y.ndim == 4 and y.is_contiguous(memory_format=torch.channels_last))


def _contiguous(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, contiguous: ``t`` itself when it already is (``Tensor.to`` with a
    ``memory_format`` may return a permuted 4-d tensor as it is)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def _fresh(name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty_like(like, dtype=dtype)


def softmax_parts(
    z: torch.Tensor, buffer: Callable[..., torch.Tensor] = _fresh, *, own: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The softmax over dim 1 up to its division, and the argmax mask, from one shifted pass.

    Args:
        z: (N, C, ...) finite logits.
        buffer: ``buffer(name, like, dtype=None)`` returns a reusable tensor like ``like``; default
            fresh tensors.
        own: compute the shifted logits in place in ``z`` (the caller's fresh copy).

    Returns:
        ``(s, e, S, mask)``: s = z − max_c z (N, C, ...), e = exp(s) (N, C, ...), S = Σ_c e
        (N, 1, ...) and the bool mask s == 0 (ties give several Trues; the callers check once per
        batch). p = e / S and H[p] = log S − Σ_c e·s / S. ``s``, ``e`` and ``mask`` live in
        ``buffer`` s (``s`` in ``z`` with ``own``).

    Example:
        >>> z = torch.tensor([[2.0, 0.0]])
        >>> s, e, total, mask = softmax_parts(z)
        >>> torch.allclose(e / total, z.softmax(1)), mask.tolist()
        (True, [[True, False]])
    """
    top = z.amax(1, keepdim=True)
    s = z.sub_(top) if own else torch.sub(z, top, out=buffer("shifted", z))
    # argmax mask (s == 0, i.e. s >= 0 as s <= 0): a float compare then a float -> bool copy are
    # ~3x faster than a bool compare, and a float -> uint8 copy ~6x slower than to bool
    floats = torch.ge(s, 0.0, out=buffer("floats", z))
    mask = buffer("argmax", z, torch.bool).copy_(floats)
    e = torch.exp(s, out=floats)  # the float buffer is free again
    return s, e, e.sum(1, keepdim=True), mask


def _prediction_from_sums(
    log_sum: LogSum,
    entropy_sum: torch.Tensor,
    votes: torch.Tensor,
    count: int,
    samples: torch.Tensor | None,
) -> Prediction:
    """A Prediction holding these sufficient statistics, as if its ``count`` samples had been
    added one by one with ``Prediction.add_log_probs`` (tests/test_tta.py checks the equivalence).
    A sum that stayed linear is handed over as it is (Prediction takes its log only if asked).

    """
    linear = log_sum.linear_total()
    return Prediction.from_statistics(count=count, entropy_sum=entropy_sum, votes=votes, samples=samples,
                                      linear_sum=linear, log_sum=None if linear is not None else log_sum.result())
