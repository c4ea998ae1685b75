"""The one rule that turns what a model returns into its logits tensor.

Third-party models rarely return a bare tensor: Hugging Face classifiers return an
``ImageClassifierOutput`` (``.logits``), torchvision segmentation models a dict (``"out"``, and
``"aux"`` with an auxiliary head). Every entry point that calls a user's model (``predict``,
``compare``, ``MCDropout``, ``TTA``, ``Ensemble``, ``train_ensemble``, ``fit``) reads the logits
through :func:`logits_of`:

* ``output=None`` (the default rule), in this order:

  1. a tensor is the logits;
  2. a mapping (``dict``, Hugging Face ``ModelOutput``) with exactly one of the keys ``"logits"``
     and ``"out"``: that entry (a torchvision ``{"out", "aux"}`` dict gives ``"out"``);
  3. any other object with a tensor attribute ``logits``: that attribute.

  Anything else — a tuple, a mapping with both or neither key — is an error that names what was
  found and how to choose (``output=``).
* ``output="name"``: the mapping's entry of that key, else the attribute of that name.
* ``output=i`` (an integer): the i-th element of a tuple or list.
* ``output=callable``: ``output(model_output)``.

The result must be a tensor; its shape is checked by the caller (``(N, C, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch

__all__ = ["OutputRule", "check_output_rule", "describe", "logits_of", "stacked_shape"]

OutputRule = Union[str, int, Callable[[Any], torch.Tensor], None]

_KEYS = ("logits", "out")


def check_output_rule(output: Any, name: str = "output") -> OutputRule:
    """``output`` itself after checking it is None, a key / attribute name, an index or a callable.

    Example:
        >>> check_output_rule("out")
        'out'
    """
    if output is None or isinstance(output, str) or callable(output):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise TypeError(
        f"`{name}` must be None, a key or attribute name (str), a tuple index (int) or a callable "
        f"taking the model's output, got {type(output).__name__}"
    )


def describe(out: Any) -> str:
    """A short description of a model output for error messages (types, keys and shapes).

    Example:
        >>> describe({"out": torch.zeros(2, 3), "aux": torch.zeros(2, 3)})
        "a dict with keys ['out', 'aux'] (out: tensor (2, 3), aux: tensor (2, 3))"
    """
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        parts = []
        for k, v in list(out.items())[:6]:
            parts.append(f"{k}: tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}: {type(v).__name__}")
        return f"a {type(out).__name__} with keys {list(map(str, out))} ({', '.join(parts)})"
    if isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        kinds = [f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in out[:6]]
        return f"a {type(out).__name__} of {len(out)} elements ({', '.join(kinds)})"
    return f"a {type(out).__name__}"


def _default(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        found = [k for k in _KEYS if k in out and out[k] is not None]
        if len(found) == 1 and isinstance(out[found[0]], torch.Tensor):
            return out[found[0]]
        return None
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def logits_of(out: Any, output: OutputRule = None, *, name: str = "model") -> torch.Tensor:
    """The logits tensor in a model's output, by the rule of this module (``output`` overrides it).

    Args:
        out: what the model returned.
        output: None (the default rule), a key or attribute name, a tuple index, or a callable.
        name: how error messages call the model (e.g. ``"model"``, ``"ensemble member 2"``).

    Returns:
        the logits tensor (its shape unchecked).

    Raises:
        TypeError: the output holds no logits by the rule, or holds them ambiguously; the message
            says what was found and suggests ``output=``.

    Example:
        >>> z = torch.zeros(2, 3)
        >>> logits_of(z) is z, logits_of({"out": z, "aux": z * 2}) is z
        (True, True)
        >>> logits_of((z, z + 1), output=1)[0, 0].item()
        1.0
    """
    if output is None:
        z = _default(out)
        if z is not None:
            return z
        if isinstance(out, Mapping) and all(k in out and out[k] is not None for k in _KEYS):
            why = "both 'logits' and 'out' are present"
        elif isinstance(out, Mapping):
            why = "it has neither a 'logits' nor an 'out' entry holding a tensor"
        else:
            why = "it is not a tensor, a mapping with 'logits' or 'out', or an object with a tensor `.logits`"
        raise TypeError(
            f"`{name}` output must hold the logits, got {describe(out)}: {why}; pass output= "
            "(a key or attribute name such as 'out', a tuple index, or a callable) to say which"
        )
    if callable(output) and not isinstance(output, str):
        z = output(out)
        what = f"output={getattr(output, '__name__', type(output).__name__)}(...)"
    elif isinstance(output, str):
        if isinstance(out, Mapping):
            if output not in out:
                raise TypeError(f"`{name}` output has no key {output!r} (output={output!r}), got {describe(out)}")
            z = out[output]
        elif hasattr(out, output):
            z = getattr(out, output)
        else:
            raise TypeError(
                f"`{name}` output has no key or attribute {output!r} (output={output!r}), got {describe(out)}"
            )
        what = f"output={output!r}"
    else:
        if not isinstance(out, Sequence) or isinstance(out, (str, bytes)) or not -len(out) <= output < len(out):
            raise TypeError(f"`{name}` output has no element {output} (output={output}), got {describe(out)}")
        z = out[output]
        what = f"output={output}"
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"`{name}` logits chosen by {what} must be a tensor, got {describe(z)}")
    return z


def stacked_shape(out: Any, n: int, k: int, what: str = "samples") -> str:
    """The end of an error message about logits of ``k`` stacked copies of a batch of ``n``: the
    user's batch size and the shape per copy, not the internal stacked row count.

    Example:
        >>> stacked_shape(torch.zeros(8, 3, 5), n=2, k=4)
        'for the batch of N = 2 inputs, got shape (2, 3, 5) per copy (4 samples stacked as 8 rows)'
    """
    if not isinstance(out, torch.Tensor):
        return f"for the batch of N = {n} inputs, got {describe(out)}"
    shape = tuple(out.shape)
    if out.ndim >= 1 and k > 1 and shape[0] % k == 0:
        return (
            f"for the batch of N = {n} inputs, got shape {(shape[0] // k, *shape[1:])} per copy "
            f"({k} {what} stacked as {shape[0]} rows)"
        )
    return f"for the batch of N = {n} inputs, got shape {shape}"
