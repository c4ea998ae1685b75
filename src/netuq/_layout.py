"""The memory layout of the inputs netuq builds itself (TTA views): channels-last on CPU.

On CPU, PyTorch's oneDNN convolutions run faster on channels-last inputs (the values of one
pixel's channels next to each other, strides (H·W·C, 1, W·C, C)) than on contiguous (N, C, H, W)
ones, and a convolution's output keeps its input's layout, so the whole network runs channels-last
without touching the model or its weights. Measured here (one thread, the model alone):
SmallUNet on 4 x 1 x 64 x 64 1.25x faster, SmallCNN on 64 x 1 x 28 x 28 1.3-1.6x
(``perf/bench_tta.py`` shows it within TTA: the rows with ``channels_last=False``). netuq owns
the views it feeds a model, so it may choose their layout; the results are the same function up
to float rounding (a different summation order in the convolutions).

What can go wrong, and what :class:`InputLayout` does about it:

* code that assumes contiguous activations: ``.view(N, -1)`` on a convolution's output raises
  on a channels-last one, and a custom op reading ``data_ptr()`` would compute something else.
  The first forward of each input shape runs both layouts and keeps channels-last only where the
  outputs agree (:func:`outputs_agree`); an error in the channels-last forward keeps it
  contiguous. Only the first :data:`CHECKS` shapes are checked so (images of many sizes would
  otherwise each run twice); later shapes follow their verdict.
* side effects of that extra forward: it runs only when every module is in eval mode (no
  BatchNorm statistics updated) and with the random state restored afterwards (a model that
  still draws in eval mode, e.g. ``F.dropout(x, training=True)``, leaves the stream as one
  forward would); forward hooks see it.
* devices where it does not pay: only CPU is measured; elsewhere the default stays contiguous
  (``channels_last=True`` forces it, with no check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKS", "InputLayout", "check_channels_last", "check_in_eval", "compare_layouts", "outputs_agree",
    "to_channels_last", "worth_trying",
]  # fmt: skip


def check_channels_last(value: Any) -> bool | None:
    """Validate a ``channels_last`` argument: None (decide per input shape), True or False."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"`channels_last` must be None, True or False, got {value!r}")
    return value


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of a 4-d tensor (N, C, H, W), with strides (H·W·C, 1, W·C, C) even for
    C = 1, where ``x.contiguous(memory_format=torch.channels_last)`` keeps the contiguous strides
    (both describe the same memory, and PyTorch then picks the contiguous kernels).

    Example:
        >>> to_channels_last(torch.zeros(2, 1, 4, 3)).stride()
        (12, 1, 3, 1)
    """
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def worth_trying(model: Any, x: torch.Tensor, *, in_eval: bool = True) -> bool:
    """Whether the default tries channels-last for ``model`` on ``x``: a 4-d floating-point CPU
    input, an ``nn.Module`` with a 2-d convolution, and (``in_eval``) every module in eval mode
    (the check's extra forward must have no side effects; :func:`check_in_eval` sees to that
    itself)."""
    return (
        isinstance(x, torch.Tensor)
        and x.ndim == 4
        and x.device.type == "cpu"
        and x.is_floating_point()
        and isinstance(model, nn.Module)
        and not (in_eval and any(m.training for m in model.modules()))
        and _has_conv2d(model)
    )


def check_in_eval(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` gives the same outputs on ``x`` in both layouts, checked in eval mode
    without gradients and with the random state restored afterwards (no side effect on a model
    being trained: no BatchNorm statistics, no draws from the stream). For :func:`netuq.training.fit`:
    what holds in eval mode holds in training mode, whose layers compute the same way (element-wise
    dropout masks are drawn in memory order, so they differ from the contiguous run's, with the
    same distribution)."""
    from ._modes import eval_mode

    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            return compare_layouts(lambda: model(x), lambda: model(to_channels_last(x)))[1]
        except Exception:  # noqa: BLE001 - the run as given failed: the training step words the error
            return False


def compare_layouts(
    run_given: Callable[[], Any], run_channels_last: Callable[[], Any], rewind: Callable[[], None] | None = None
) -> tuple[Any, bool]:
    """The check itself: ``run_given()``, then ``run_channels_last()`` on the same CPU random state
    (replayed; ``rewind()`` first resets the caller's own state, e.g. MC dropout's per-sample
    seeds), compared with :func:`outputs_agree` against a copy of the first output (a model may
    return the same memory each time). An error in the second run counts as a disagreement (e.g.
    a ``.view()`` of an activation). The random stream is left where the run as given left it.

    Returns:
        ``(output, agree)``: the channels-last output where they agree, else the one as given.

    Example:
        >>> net = nn.Conv2d(1, 2, 3).eval()
        >>> x = torch.randn(1, 1, 5, 5)
        >>> out, agree = compare_layouts(lambda: net(x), lambda: net(to_channels_last(x)))
        >>> agree, out.stride()[1]                       # channels-last: unit channel stride
        (True, 1)
    """
    before = torch.get_rng_state()
    given = _copy(run_given())
    after = torch.get_rng_state()
    other, agree = None, False
    try:
        torch.set_rng_state(before)
        if rewind is not None:
            rewind()
        other = run_channels_last()
        agree = outputs_agree(given, other)
    except Exception:  # noqa: BLE001 - e.g. a .view() of an activation: stay as given
        agree = False
    finally:
        torch.set_rng_state(after)
    return (other if agree else given), agree


def outputs_agree(ref: Any, other: Any) -> bool:
    """Whether two outputs are the same function's up to rounding: tensors of one shape and dtype,
    ``ref`` finite, max |ref − other| ≤ sqrt(eps) · max(1, max |ref|) (3.5e-4 in float32; a
    layout-dependent op differs at the scale of the values).

    Example:
        >>> outputs_agree(torch.ones(3), torch.ones(3) + 1e-6), outputs_agree(torch.ones(3), torch.zeros(3))
        (True, False)
    """
    if isinstance(ref, (tuple, list)) and type(ref) is type(other) and len(ref) == len(other) and ref:
        return all(outputs_agree(a, b) for a, b in zip(ref, other))  # e.g. (mu, sigma) heads
    if not (isinstance(ref, torch.Tensor) and isinstance(other, torch.Tensor)):
        return False
    ref, other = ref.detach(), other.detach()
    if ref.shape != other.shape or ref.dtype != other.dtype or not ref.is_floating_point() or not ref.numel():
        return False
    scale = ref.abs().amax()
    if not torch.isfinite(scale):
        return False
    tol = torch.finfo(ref.dtype).eps ** 0.5 * max(1.0, float(scale))
    return bool((ref - other).abs().amax() <= tol)


def _copy(out: Any) -> Any:
    """A copy of every tensor of an output (a tensor, or a tuple / list of them)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)) and type(out) in (tuple, list):
        return type(out)(_copy(o) for o in out)
    return out


# checks per family of keys (one model, channel count, dtype and device): a key after these follows
# their verdict without the check's second forward (images of many sizes would each run twice)
CHECKS = 4


class InputLayout:
    """Which layout a wrapper feeds its model, decided once per key (e.g. an input shape).

    The first :data:`CHECKS` keys of a family (``family``, channels, dtype, device) are checked
    (two forwards each); a later key of that family follows them without a second forward:
    channels-last if every check agreed (contiguous again if that forward raises), else contiguous.

    Args:
        setting: None: channels-last where :func:`worth_trying` and the first forward's check
            agree; True: always channels-last (4-d inputs), no check; False: never.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
        >>> layout = InputLayout(None)
        >>> out = layout.forward(net, torch.randn(2, 1, 6, 6), "key", net)
        >>> layout.decided["key"]
        True
    """

    def __init__(self, setting: bool | None = None) -> None:
        self.setting = check_channels_last(setting)
        self.decided: dict[Any, bool] = {}
        self.verdicts: dict[tuple, list[bool]] = {}  # family -> the checks' outcomes

    def __setstate__(self, state: dict) -> None:
        state.setdefault("verdicts", {})  # pickled before checks were counted per family
        self.__dict__.update(state)

    def chosen(self, key: Any, x: torch.Tensor) -> bool | None:
        """Whether ``x`` goes channels-last under ``key``; None while undecided (:meth:`forward`
        decides)."""
        if x.ndim != 4:
            return False
        return self.setting if self.setting is not None else self.decided.get(key)

    def forward(
        self, model: Any, x: torch.Tensor, key: Any, run: Callable[[torch.Tensor], Any], family: Any = None
    ) -> Any:
        """``run(x)`` with ``x`` in the layout chosen for ``key`` (choosing it on its first use);
        ``family``: what else tells the caller's models apart (e.g. an ensemble member's index)."""
        if self.setting is not None or x.ndim != 4:
            return run(to_channels_last(x) if self.setting and x.ndim == 4 else x)
        chosen = self.decided.get(key)
        if chosen is not None:
            return run(to_channels_last(x) if chosen else x)
        verdicts = self.verdicts.setdefault((family, x.shape[1], x.dtype, x.device), [])
        if len(verdicts) >= CHECKS:
            if all(verdicts) and worth_trying(model, x):
                try:
                    out = run(to_channels_last(x))
                except Exception:  # noqa: BLE001 - e.g. a .view() only at this shape: contiguous
                    pass
                else:
                    self.decided[key] = True
                    return out
            self.decided[key] = False
            return run(x)
        if not worth_trying(model, x):
            self.decided[key] = False
            return run(x)
        # the chosen layout's result, so that every call of this key (the first too) runs one layout
        out, agree = compare_layouts(lambda: run(x), lambda: run(to_channels_last(x)))
        verdicts.append(agree)
        self.decided[key] = agree
        return out
