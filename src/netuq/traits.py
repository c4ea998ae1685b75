"""What the engine and the report need to know about a method: its traits, from a small protocol.

A method (anything :func:`netuq.predict` takes) may implement :class:`Method`:

* ``netuq_traits() -> Traits`` (required by the protocol): the method's family, whether its
  samples carry an epistemic part, its number of members, whether it draws seeded noise;
* ``netuq_predictor(seed) -> (x -> Prediction)`` (optional): how to run it on a batch, seeded
  (default: call it);
* ``netuq_members() -> list`` (optional): its members, each a method scored alone (ensembles).

netuq's method classes implement it; a user's callable may carry ``fn.netuq_traits`` too (see
:func:`with_traits`). :func:`traits_of` reads it for any method — the engine never tests a
method's class, and the report never reads a method's *name*: ``compare`` writes the traits into
the results (``MethodResults["traits"]``), and the report recognises a "deep ensemble" or
"my_ens" as an ensemble by ``traits["family"]``.

:data:`FAMILIES` (family → display label) is the method vocabulary; a user's family is
registered with :func:`register_family` (or is shown with its name).

Example:
    >>> import torch
    >>> from netuq import Prediction
    >>> from netuq.traits import Traits, traits_of, with_traits
    >>> traits_of(torch.nn.Linear(2, 2)).family
    'deterministic'
    >>> fn = with_traits(lambda x: Prediction.from_logits(x), Traits("mine", epistemic=False))
    >>> traits_of(fn).epistemic, traits_of(fn).label
    (False, 'mine')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Traits", "Method", "FAMILIES", "register_family", "family_label", "traits_of", "with_traits"]

#: family → display label (the benchmark's method keys are family names).
FAMILIES: dict[str, str] = {
    "deterministic": "deterministic",
    "mc_dropout": "MC dropout",
    "ensemble": "deep ensemble",
    "tta": "TTA",
    "heteroscedastic": "heteroscedastic",
    "confidence": "learned confidence",
    "custom": "custom method",
}


def register_family(name: str, label: str) -> None:
    """Add (or relabel) a method family: ``name`` → display ``label``."""
    if not isinstance(name, str) or not name or not isinstance(label, str) or not label:
        raise ValueError(f"`name` and `label` must be non-empty strings, got {name!r}, {label!r}")
    FAMILIES[name] = label


def family_label(family: str) -> str:
    """The display label of a family (its name with spaces where unregistered)."""
    return FAMILIES.get(family, str(family).replace("_", " "))


@dataclass(frozen=True)
class Traits:
    """A method's traits.

    Attributes:
        family: ``"deterministic"``, ``"mc_dropout"``, ``"ensemble"``, ``"tta"``,
            ``"heteroscedastic"``, ``"confidence"``, ``"custom"`` or a user's (:data:`FAMILIES`).
        epistemic: whether the disagreement of its samples is epistemic (mutual information is
            meaningful); False for logit noise (Kendall & Gal 2017) and single-sample methods.
        members: number of members (ensembles), else None.
        seeded: whether it draws noise from a seed (fresh per batch, reproducible per call).
    """

    family: str = "custom"
    epistemic: bool = True
    members: int | None = None
    seeded: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise ValueError(f"`family` must be a non-empty string, got {self.family!r}")
        if not isinstance(self.epistemic, bool) or not isinstance(self.seeded, bool):
            raise TypeError(f"`epistemic` and `seeded` must be bools, got {self.epistemic!r}, {self.seeded!r}")
        if self.members is not None and (isinstance(self.members, bool) or not isinstance(self.members, int)
                                         or self.members < 1):
            raise ValueError(f"`members` must be a positive int or None, got {self.members!r}")

    @property
    def label(self) -> str:
        """The family's display label."""
        return family_label(self.family)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the results (``MethodResults["traits"]``)."""
        return asdict(self)


@runtime_checkable
class Method(Protocol):
    """The protocol a method implements (only ``netuq_traits`` is required; see the module)."""

    def netuq_traits(self) -> Traits: ...


def with_traits(fn: Callable, traits: Traits) -> Callable:
    """Attach ``traits`` to a callable (returns it): ``traits_of(fn)`` then reads them."""
    if not isinstance(traits, Traits):
        raise TypeError(f"`traits` must be a netuq.traits.Traits, got {type(traits).__name__}")
    fn.netuq_traits = lambda: traits
    return fn


def traits_of(method: Any) -> Traits:
    """The traits of any method kind: its ``netuq_traits()``; a plain ``nn.Module`` is
    deterministic; a callable is ``"custom"`` (a legacy ``fn.epistemic = False`` is honoured)."""
    fn = getattr(method, "netuq_traits", None)
    if fn is not None:
        traits = fn() if callable(fn) else fn
        if not isinstance(traits, Traits):
            raise TypeError(f"`netuq_traits()` of {type(method).__name__} must return netuq.traits.Traits, "
                            f"got {type(traits).__name__}")
        return traits
    from torch import nn

    if isinstance(method, nn.Module):
        return Traits("deterministic", epistemic=False)
    return Traits("custom", epistemic=bool(getattr(method, "epistemic", True)))
