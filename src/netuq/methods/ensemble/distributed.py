"""Training an ensemble's members in parallel processes (``torchrun``): who trains which member,
and how every process ends up with all of them.

Member ``k`` is trained by rank ``k % world_size``. Member training does not depend on the other
members (each is seeded on its own), so the weights are those a single process computes. When
every rank is done, each member's weights and metadata travel from its rank to all others
(``broadcast_object_list``, any backend, no shared file system needed); with a
``checkpoint_dir`` the owning rank also writes the member's file and rank 0 the manifest, so the
folder is the one a single process writes (it must then be on a file system all ranks share).
A failure on one rank is reported on every rank instead of leaving the others waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["World", "world"]

T = TypeVar("T")


class World:
    """The processes training one ensemble: ``rank`` of ``size`` (1 without torch.distributed)."""

    def __init__(self, rank: int = 0, size: int = 1) -> None:
        self.rank, self.size = int(rank), int(size)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def owner(self, k: int) -> int:
        """The rank that trains member ``k``."""
        return k % self.size

    def owns(self, k: int) -> bool:
        return self.owner(k) == self.rank

    def together(self, step: Callable[[], T], what: str) -> T | None:
        """Run ``step`` here, then make every rank raise if it failed on any rank.

        The rank where it failed re-raises its own exception; the others raise a RuntimeError
        naming that rank and the error, so no rank is left waiting in a later collective call.
        """
        result, error = None, None
        try:
            result = step()
        except BaseException as err:  # re-raised below, after telling the other ranks
            error = err
        if self.distributed:
            import torch.distributed as dist

            reports: list[Any] = [None] * self.size
            dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
            failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
            if error is None and failed:
                rank, msg = failed[0]
                raise RuntimeError(f"train_ensemble failed on rank {rank} while {what}: {msg}")
        if error is not None:
            raise error
        return result

    def share(self, payload: Any, k: int) -> Any:
        """Member ``k``'s payload on every rank (sent by its owner; others pass ``None``)."""
        if not self.distributed:
            return payload
        import torch.distributed as dist

        box = [payload if self.owns(k) else None]
        dist.broadcast_object_list(box, src=self.owner(k))
        return box[0]


def world(distributed: bool | None) -> World:
    """The :class:`World` for ``train_ensemble(distributed=...)``.

    ``None`` (default): distributed when a ``torch.distributed`` process group is initialised
    (e.g. ``init_process_group("gloo")`` in a script run by ``torchrun``); ``True`` requires one;
    ``False``: this process trains every member.
    """
    if distributed not in (None, True, False):
        raise ValueError(f"`distributed` must be None, True or False, got {distributed!r}")
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized()
    if distributed is True and not active:
        raise ValueError(
            "`distributed=True` needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first, e.g. in a script run by torchrun), got none"
        )
    if not (distributed is not False and active):
        return World()
    return World(dist.get_rank(), dist.get_world_size())
