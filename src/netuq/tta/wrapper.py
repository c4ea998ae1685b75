"""Test-time augmentation: predict on transformed copies of the input and merge the probabilities.

Transforms and their semantics live in :mod:`netuq.tta.transforms` and :mod:`netuq.tta.compose`
(ttach-compatible: Cartesian product of parameters, identity included, de-augmentation in reverse
order). The wrapper

* runs several views per forward call (concatenated along dim 0; how many:
  :func:`netuq.tta._batching.views_per_forward`, at most ``max_batch`` rows; views are grouped by
  their augmented size, since e.g. a 90° rotation of a non-square image or a
  :class:`netuq.tta.Scale` changes it) where that cannot change the numbers: the first forward
  of an input shape runs one view (the user's batch) under a probe that measures its largest
  activation and sees whether the model mixes the rows of a batch
  (:func:`netuq._batching.couples_rows`: BatchNorm on batch statistics — training mode
  or ``track_running_stats=False`` — a custom ``F.batch_norm(training=True)``, a reduction or
  reordering over dim 0). Such a model runs one view per forward, rows as given (ttach's
  forwards); the others stack views, and without ``max_batch`` split their rows to keep the
  largest activation under :data:`netuq._batching.ACTIVATION_ELEMENTS` (on CPU a forward
  over many rows falls off the caches: see :meth:`TTA._forward`),
* takes the softmax of every view in its own frame, then brings segmentation outputs back to the
  input frame before merging. Views that only move pixels (flips, rotations, shifts:
  :attr:`netuq.tta.View.copies_pixels`) de-augment their **logits** with one copy (softmax,
  entropy and argmax commute with moving pixels; a rotated view is handed over in the transposed
  frame, see :func:`_logits_in_input_frame`) and the accumulator computes the rest into its
  sums (:meth:`netuq.tta.merges.ViewAccumulator.add_logits`); the others (``Scale``, foreign
  ttach transforms) go through :meth:`netuq.tta.View.deaugment_log_probs`, which resizes the
  **probabilities** bilinearly to the exact original H × W, so every pixel stays a normalised
  distribution,
* merges **probabilities**, never raw logits, with exact log-space results
  (:mod:`netuq.tta.merges`), streaming: memory does not grow with the number of views,
* never changes the model's mode: it runs the model as it is (normally ``eval()``).

Merges (over V views with probabilities p_v):

* ``"mean"``: p̄ = (1/V) Σ_v p_v. The returned Prediction holds the views as samples, so
  ``aleatoric`` = E_v H[p_v] and ``epistemic`` = H[p̄] − E_v H[p_v] measure the disagreement
  between views (Ayhan & Berens 2018; Shanmugam et al. 2021 for when TTA helps).
* ``"gmean"``: exp(mean_v log p_v), renormalised over classes (computed in log space; the
  product of probabilities underflows).
* ``"max"``: max_v p_v per class, renormalised.
* ``"tsharpen"``: mean_v p_v^t with t = 0.5, renormalised (temperature sharpening, Shanmugam
  et al., "When and Why Test-Time Augmentation Works", 2020 preprint; ttach's ``tsharpen``).

For the merges other than ``"mean"`` the returned Prediction is the merged distribution itself
(one sample: ``entropy`` = ``aleatoric`` = H[merged], ``epistemic`` = 0), and the decomposition
across views is attached as ``scores``: ``"view_aleatoric"``, ``"view_epistemic"`` and
``"view_variation_ratio"`` (each (N, ...); use ``pred.uncertainty("view_epistemic")``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch

from .._batching import LargestTensor, activation_chunk, balanced_chunk, batch_statistics
from .._checks import check_int, float_dtype
from .._layout import as_layout, check_channels_last
from ..prediction import Prediction, _check_log_values
from ..traits import Traits
from ._batching import views_per_forward
from .bridge import as_compose
from .compose import Compose, View
from .merges import MERGES, TSHARPEN_T, ViewAccumulator, softmax_parts

__all__ = ["TTA", "MERGES", "TASKS", "TSHARPEN_T"]

TASKS = ("classification", "segmentation")


class TTA:
    """Test-time augmentation around a model; returns a :class:`netuq.Prediction`.

    Args:
        model: callable (usually an ``nn.Module`` in eval mode), (N, C_in, H, W) -> logits
            (N, C) for classification or (N, C, H, W) for segmentation.
        transforms: a :class:`netuq.tta.Compose` (e.g. ``netuq.tta.d4()``), a transform, a list
            of transforms, or a ``ttach.Compose``.
        merge: "mean", "gmean", "max" or "tsharpen" (see the module docstring).
        task: "classification" (outputs merged as they are) or "segmentation" (outputs
            de-augmented to the input frame first).
        keep_samples: keep every view's probabilities (``pred.samples``, (V, N, C, ...), in the
            order of ``transforms``); only with ``merge="mean"``.
        max_batch: at most this many rows per forward call (``max_batch=N`` runs one view per
            call like ttach). None: on CPU as many views as keep the stacked input under 2**13
            elements (at least one: batching pays only for small inputs there), elsewhere
            :func:`netuq._batching.default_chunk`; and once the first forward of an
            input shape has measured its largest activation, forwards whose largest activation
            would exceed :data:`netuq._batching.ACTIVATION_ELEMENTS` split their rows.
            A model that mixes the rows of a batch (BatchNorm on batch statistics, …) always
            runs one view per forward on the rows as given.
        no_grad: run under ``torch.no_grad()`` (default).
        channels_last: opt-in speed on CPU (:mod:`netuq._layout`): True feeds the stacked views
            channels-last, with no check (1.25-1.6x faster convolutions here; probabilities
            differ from the default's by float rounding, up to ~1e-4 on a plain CNN). False or
            None (default): the views in the input's layout, as the user's own loop would.
    Example:
        >>> import netuq
        >>> net = torch.nn.Conv2d(3, 4, 1).eval()   # per-pixel: equivariant to flips/rotations
        >>> tta = TTA(net, netuq.tta.d4(), task="segmentation")
        >>> x = torch.randn(2, 3, 8, 6)
        >>> pred = tta(x)
        >>> pred.probs.shape, pred.num_samples
        (torch.Size([2, 4, 8, 6]), 8)
        >>> torch.allclose(pred.probs, net(x).softmax(1), atol=1e-6)
        True
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        transforms: Any,
        *,
        merge: str = "mean",
        task: str = "classification",
        keep_samples: bool = False,
        max_batch: int | None = None,
        no_grad: bool = True,
        channels_last: bool | None = False,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be callable (an nn.Module), got {type(model).__name__}")
        if merge not in MERGES:
            raise ValueError(f"`merge` must be one of {list(MERGES)}, got {merge!r}")
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
        check_int(max_batch, "max_batch", 1, allow_none=True)
        if keep_samples and merge != "mean":
            raise ValueError(f"`keep_samples=True` needs merge='mean' (the views are the samples), got merge={merge!r}")
        self.model = model
        self.transforms: Compose = as_compose(transforms)
        self.merge = merge
        self.task = task
        self.keep_samples = bool(keep_samples)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.no_grad = bool(no_grad)
        self._exact_outputs = False  # set once the model's outputs need the exact pass (half logits)
        self._workspaces = threading.local()  # per thread: one call's buffers, kept for the next
        self._plans: dict[tuple, _Plan] = {}  # (input shape, view size, dtype, device) -> the probe's findings
        self.channels_last = check_channels_last(channels_last)

    def __repr__(self) -> str:
        return (
            f"TTA({type(self.model).__name__}, {len(self.transforms)} views, merge={self.merge!r}, "
            f"task={self.task!r}, max_batch={self.max_batch})"
        )

    def netuq_traits(self) -> Traits:
        """TTA's traits (:mod:`netuq.traits`): the views' disagreement counts as epistemic."""
        return Traits("tta", epistemic=True)

    def __call__(self, x: torch.Tensor) -> Prediction:
        """Predict on every view of a batch and merge.

        Args:
            x: (N, C_in, H, W) images.

        Returns:
            Prediction: ``probs`` (N, C) or (N, C, H, W); see the class docstring for merges.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"`x` must have shape (N, C, H, W) with N >= 1, got shape {tuple(x.shape)}")
        with ExitStack() as stack:
            if self.no_grad:
                stack.enter_context(torch.no_grad())
            n = x.shape[0]
            if self.max_batch is not None and self.max_batch < n:
                return Prediction.cat([self._predict(x[s : s + self.max_batch]) for s in range(0, n, self.max_batch)])
            return self._predict(x)

    def _predict(self, x: torch.Tensor, exact: bool = False) -> Prediction:
        """Run every view of ``x`` and merge.

        The default pass is optimistic: no per-view finiteness or tie check (each costs a full
        pass over the outputs, and a device sync). One check at the end (every entropy finite,
        exactly one vote per pixel and view) accepts it; otherwise the batch is run again with
        ``exact=True``, which checks every view's logits (the error names them) and breaks argmax
        ties at the first maximum, as :meth:`netuq.Prediction.add_log_probs` does. A result the
        check accepts equals the exact one.
        """
        n, size = x.shape[0], tuple(x.shape[-2:])
        views = self.transforms.views
        # resampling views are checked per view (see _fast_pass_takes); the fast pass writes into
        # buffers with out=, which autograd refuses
        exact = exact or self._exact_outputs or torch.is_grad_enabled() or not all(v.copies_pixels for v in views)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(v.output_size(size), []).append(i)
        acc: ViewAccumulator | None = None
        first: View | None = None
        work = self._workspace()
        coupled = batch_statistics(self.model)  # BatchNorm on the batch's statistics, as the model is now
        for aug_size, idx in groups.items():
            per_row = x.shape[1] * aug_size[0] * aug_size[1]
            plan = (tuple(x.shape), aug_size, x.dtype, str(x.device))
            start = 0
            while start < len(idx):
                # the first forward of a shape runs one view (the user's batch) under a probe: its largest
                # activation, and whether the model mixes rows (then every forward runs one view, unsplit)
                known, probed = self._plans.get(plan), None
                if known is None:
                    probed = self._forward(views[idx[start]].augment(x), None, plan, probe=True)
                    known = self._plans[plan]
                rows = None
                if known.coupled or coupled:
                    per_forward = 1
                else:
                    per_forward = views_per_forward(n, per_row, len(idx) - start, x.device, self.max_batch)
                    if self.max_batch is None:  # keep the largest activation near the caches
                        rows = known.rows
                        per_forward = balanced_chunk(min(per_forward, max(1, rows // n)), len(idx) - start)
                chunk = idx[start : start + per_forward]
                start += len(chunk)
                if probed is not None and len(chunk) == 1 and (rows is None or rows >= n):
                    out = probed  # the forward every later call runs for this view: the same numbers
                else:  # the probe measured only: run the views as every later call does (the same numbers)
                    del probed
                    parts = [views[i].augment(x) for i in chunk]
                    inp = torch.cat(parts) if len(parts) > 1 else parts[0]
                    out = self._forward(inp, rows, plan)
                    del parts
                    del inp
                for block in self._run([views[i] for i in chunk], chunk, out, n, size, work, exact):
                    if block is None:  # outputs the fast pass does not take: remember, run exactly
                        self._exact_outputs = True
                        return self._predict(x, exact=True)
                    if isinstance(block, _Logits):
                        z_d = block.z
                        shape = tuple(z_d.shape[:-2]) + tuple(z_d.shape[-2:][:: -1 if block.transposed else 1])
                        probs = z_d
                    else:
                        probs = block.probs
                        shape = tuple(probs.shape[1:] if block.stacked else probs.shape)
                    if acc is None:
                        first = views[chunk[0]]
                        acc = ViewAccumulator(
                            shape, probs.dtype, probs.device,
                            views=len(views), merge=self.merge, keep_samples=self.keep_samples,
                        )  # fmt: skip
                    elif shape != acc.shape:
                        raise ValueError(
                            f"`model` outputs must have the same shape for every view once de-augmented, got "
                            f"{shape} for {views[block.index[0]]} and {acc.shape} for {first}"
                        )
                    if isinstance(block, _Logits):
                        acc.add_logits(
                            block.z, block.index, transposed=block.transposed, own=block.own, buffer=work.buffer
                        )
                        del z_d
                    else:
                        acc.add(probs, block.entropy, block.argmax, block.log_probs, block.index, stacked=block.stacked)
                    del block, probs  # free this view's outputs before the next forward
                del out
        work.end_call()
        if not exact and not acc.one_vote_each_and_finite():
            return self._predict(x, exact=True)
        return acc.prediction()

    def _workspace(self) -> _Workspace:
        """This thread's workspace (buffers reused from call to call while they stay small)."""
        work = getattr(self._workspaces, "work", None)
        if work is None:
            work = self._workspaces.work = _Workspace()
        return work

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_workspaces")  # buffers (and a thread-local) are not part of the wrapper's state
        state.pop("_plans")  # nor what was measured on this machine (measured again where loaded)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._plans = {}
        self._workspaces = threading.local()

    def _forward(self, inp: torch.Tensor, rows: int | None, plan: tuple, probe: bool = False) -> Any:
        """The model on ``inp`` (channels-last if opted in), at most ``rows`` rows per call (outputs
        concatenated). ``probe``: one call (one view) that measures its largest activation and
        whether the model mixes rows (:func:`netuq._batching.couples_rows`), stored as
        ``self._plans[plan]``: the rows per forward that keep the largest activation under
        :data:`netuq._batching.ACTIVATION_ELEMENTS`.

        On CPU a forward over many rows falls off the caches: SmallCNN on 256 x 1 x 28 x 28 runs
        ~1.8x faster as 4 calls of 64 rows (perf/bench_tta.py, case "cls256").
        """
        inp = as_layout(inp, self.channels_last)
        total = inp.shape[0]
        if probe:
            with LargestTensor(rows=total) as seen:
                out = self.model(inp)
            rows = activation_chunk(-(-max(seen.largest, inp.numel()) // total), inp.device)
            self._plans[plan] = _Plan(rows, seen.coupled)
            return out
        if rows is None or rows >= total:
            return self.model(inp)
        step = balanced_chunk(rows, total)
        out = None
        for s in range(0, total, step):
            part = self.model(inp[s : s + step])
            if not isinstance(part, torch.Tensor) or part.ndim < 2 or part.shape[0] != min(step, total - s):
                return part  # not logits of these rows: _run's check words the error
            if out is None:  # in the layout of the part (channels-last stays so)
                out = torch.empty((total, *part.shape[1:]), dtype=part.dtype, device=part.device,
                                  memory_format=_layout_of(part))  # fmt: skip
            out[s : s + step].copy_(part)  # before the next call: a model may return the same memory each time
        return out

    def _run(
        self,
        chunk: list[View],
        index: list[int],
        out: Any,
        n: int,
        size: tuple[int, int],
        work: _Workspace,
        exact: bool,
    ):
        """Check the outputs ``out`` of a chunk of views (their inputs stacked, N = ``n`` rows each) and
        yield, in the input frame, a :class:`_Block` (probabilities, exact pass and classification)
        or a :class:`_Logits` (de-augmented logits, the fast pass for segmentation) per view, as
        :meth:`ViewAccumulator.add` / ``add_logits`` take them (argmax ties broken only when
        ``exact``). Yields None when the fast pass cannot take the outputs (see
        :func:`_fast_pass_takes`), so that the caller runs the exact one."""
        k = len(chunk)
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != k * n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"`model` must return logits of shape (N, C, ...) with N = {k * n} rows, got {shape}")
        if self.task == "segmentation" and out.ndim != 4:
            raise ValueError(
                f"`model` must return (N, C, H, W) logits for task='segmentation', got shape {tuple(out.shape)}"
            )
        if not exact and not _fast_pass_takes(out):
            yield None
            return
        if exact:
            z, masked = _checked_logits(out)
            stats = _softmax_stats
            if masked:  # a masked class (-inf): the fast pass's end check would refuse every call
                self._exact_outputs = True
        else:
            z, stats = out.to(float_dtype(out)), work.softmax_stats
        if self.task == "classification":  # outputs are never de-augmented: the chunk is one block
            rest = tuple(z.shape[1:])
            probs, entropy, argmax = stats(z)
            yield _Block(
                probs.view(k, n, *rest), entropy.view(k, n, *rest[1:]), argmax.view(k, n, *rest),
                lambda: torch.log_softmax(z, 1).view(k, n, *rest), index, True,
            )  # fmt: skip
            return
        for i, v in enumerate(chunk):  # one view at a time: its temporaries stay in the caches
            z_v = z if k == 1 else z.narrow(0, i * n, n)
            if not exact:  # the fast pass has pixel-moving views only: de-augment the logits, once
                yield _logits_in_input_frame(v, z_v, size, index[i : i + 1])
            elif v.copies_pixels:  # per-pixel results in the augmented frame, then moved back
                probs, entropy, argmax = stats(z_v)
                probs, entropy, argmax = v.deaugment_all((probs, entropy.unsqueeze(1), argmax), size)
                yield _Block(
                    probs, entropy.squeeze(1), argmax,
                    lambda v=v, z_v=z_v: v.deaugment(torch.log_softmax(z_v, 1), size), index[i : i + 1], False,
                )  # fmt: skip
            else:  # resampling: de-augment the log-probabilities (probabilities interpolated)
                log_p = v.deaugment_log_probs(torch.log_softmax(z_v, 1), size)
                p = log_p.exp()
                entropy_v = -(p * log_p).sum(1)  # log_p is finite: clamped where it was resampled
                argmax_v = _argmax_mask(log_p, log_p.amax(1, keepdim=True))  # only in exact passes
                yield _Block(p, entropy_v, argmax_v, (lambda log_p=log_p: log_p), index[i : i + 1], False)


class _Plan(NamedTuple):
    """What the probe forward of an input shape measured (:meth:`TTA._forward`)."""

    rows: int  # rows per forward that keep the largest activation near the caches
    coupled: bool  # the model mixes the rows of a batch: one view per forward, rows as given


class _Block(NamedTuple):
    """Probabilities of one view (or ``stacked`` views) in the input frame, as
    :meth:`ViewAccumulator.add` takes them; ``log_probs()`` gives their log."""

    probs: torch.Tensor
    entropy: torch.Tensor
    argmax: torch.Tensor
    log_probs: Callable[[], torch.Tensor]
    index: list[int]
    stacked: bool


class _Logits(NamedTuple):
    """Logits of one view brought back to the input frame (``transposed``: to its transpose), as
    :meth:`ViewAccumulator.add_logits` takes them in the fast pass."""

    z: torch.Tensor
    transposed: bool
    index: list[int]
    own: bool  # z is a fresh copy, free to overwrite


def _logits_in_input_frame(view: View, z: torch.Tensor, size: tuple[int, int], index: list[int]) -> _Logits:
    """De-augment one view's logits (N, C, h, w) with a single copy (the softmax, its entropy and
    argmax commute with moving pixels).

    A flip / rotation view de-augments as y -> flip(y.mT, F) = flip(y, F')ᵀ, F' the axes of F
    swapped: the logits are flipped (contiguous) and handed over as the transposed frame, so that
    nothing downstream reads a transposed layout (reductions over classes on one are ~10x slower).
    """
    form = view.pixel_form
    if form is None:  # e.g. shifts: through the transforms
        return _Logits(view.deaugment(z, size), False, index, False)
    transpose, dims = form
    if transpose:
        dims = tuple(sorted({-1: -2, -2: -1}[d] for d in dims))
    return _Logits(z.flip(dims), transpose, index, True) if dims else _Logits(z, transpose, index, False)


class _Workspace:
    """Buffers reused across the views of a batch, and from one call to the next.

    A fresh (N, C, H, W) temporary per view costs an allocation and, on CPU, often the page faults
    of memory the allocator had given back to the system (on a virtual machine ~3 µs a page: a
    fresh 720 KiB tensor costs as much as ~15 passes over it). Every buffer is consumed before the
    next view is computed (the accumulator adds or copies it). After a call (:meth:`end_call`)
    the CPU buffers it used are kept for the next while they total at most :attr:`KEEP_BYTES`;
    those it did not use (another shape) are freed. One workspace per thread
    (:meth:`TTA._workspace`), so a wrapper holds at most ``KEEP_BYTES`` per thread that calls it.
    """

    KEEP_BYTES = 64 * 2**20

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._used: set[tuple] = set()

    def buffer(self, name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor shaped and laid out like ``like`` (in ``dtype``), reused under ``name``."""
        dtype = like.dtype if dtype is None else dtype
        key = (name, tuple(like.shape), like.stride(), dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            # the layout of ``like`` (e.g. channels_last outputs): element-wise ops then run contiguously
            buf = self._buffers[key] = torch.empty_like(like, dtype=dtype)
        self._used.add(key)
        return buf

    def end_call(self) -> None:
        """Free the buffers this call did not use, and all of them if they exceed :attr:`KEEP_BYTES`.
        Buffers off the CPU are not kept (a device's caching allocator already reuses the memory)."""
        kept = {k: b for k, b in self._buffers.items() if k in self._used and b.device.type == "cpu"}
        if sum(b.numel() * b.element_size() for b in kept.values()) > self.KEEP_BYTES:
            kept = {}
        self._buffers, self._used = kept, set()

    def softmax_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`_softmax_stats` from :func:`netuq.tta.merges.softmax_parts` into reused buffers,
        without the tie check (see ``TTA._predict``)."""
        shifted, probs, total, mask = softmax_parts(z, self.buffer)
        probs.div_(total)
        entropy = total.log_().squeeze(1) - shifted.mul_(probs).sum(1)
        return probs, entropy, mask


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    """channels-last for a 4-d channels-last tensor, else contiguous."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fast_pass_takes(out: torch.Tensor) -> bool:
    """Whether the optimistic pass takes these outputs: float32 / float64 logits with at least one
    class. Half and bfloat16 logits tie at the top class often enough (a few percent of rows with
    many classes) that the end check would refuse most batches; they run the exact pass.

    The pass also needs views that only move pixels (a resampling view, ``Scale`` or a foreign
    ttach transform, may skip a non-finite pixel in its interpolation, so it is checked per view)
    and gradients off; ``TTA._predict`` decides those before the first forward.
    """
    return out.dtype in (torch.float32, torch.float64) and out.shape[1] > 0


def _checked_logits(out: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The logits in the compute dtype, after a one-pass check (NaN and ±inf propagate into the
    min/max), and whether a class is masked (-inf). The rule of every entry point
    (:meth:`netuq.Prediction.from_logits`, ``predict``, MCDropout, Ensemble): finite, or -inf for a
    masked class with a finite entry left in every row; no NaN, no +inf. ``_check_log_values``
    words the error."""
    if out.is_floating_point() and out.numel():
        z = out.to(float_dtype(out))
        lo, hi = torch.aminmax(z)
        if math.isfinite(lo.item()) and math.isfinite(hi.item()):
            return z, False
    _check_log_values(out, "logits", stacked=False)  # raises for NaN, +inf, a row of -inf, type and shape
    return out.to(float_dtype(out)), True


def _softmax_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over dim 1, its entropy and the one-hot argmax mask, from one shifted pass.

    With s = z − max_c z and S = Σ_c exp(s): p = exp(s) / S and H[p] = log S + Σ_c p·(−s), a sum
    of two non-negative terms (no cancellation, unlike log S − Σ p·z for large logits).
    """
    top = z.amax(1, keepdim=True)
    shifted = z - top
    mask = _argmax_mask(shifted, 0.0)
    # finite logits whose spread overflows (z - top = -inf) would give 0 * -inf = NaN below
    shifted = shifted.clamp(min=torch.finfo(shifted.dtype).min)
    probs = torch.exp(shifted)
    total = probs.sum(1, keepdim=True)
    probs = probs / total  # out of place: the exact pass also serves no_grad=False (backprop)
    entropy = total.log().squeeze(1) - (probs * shifted).sum(1)
    return probs, entropy, mask


def _argmax_mask(values: torch.Tensor, top: torch.Tensor | float) -> torch.Tensor:
    """One True per row over dim 1, at the first maximum (``values == top`` unless there are ties)."""
    mask = values == top
    if int(torch.count_nonzero(mask)) != mask.numel() // mask.shape[1]:  # ties: keep the first
        first = values.max(1, keepdim=True).indices
        mask = torch.zeros_like(mask).scatter_(1, first, True)
    return mask
