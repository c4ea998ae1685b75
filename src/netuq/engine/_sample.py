"""A seeded, bounded uniform sample of rows (examples or pixels) drawn while streaming.

Priority sampling: every row offered gets an independent uniform key from a seeded generator and
the ``cap`` rows with the smallest keys are kept, which is a uniform sample without replacement of
everything offered so far, whatever the batch sizes. Memory is O(cap) plus one batch; with
``cap=None`` every row is kept (classification, where (N, C) fits in memory).
"""

from __future__ import annotations

import torch

__all__ = ["Reservoir", "flat_rows", "take_rows", "per_row", "sampled_scores"]


class Reservoir:
    """Keep at most ``cap`` rows of named columns (each a tensor whose dim 0 is the row)."""

    def __init__(self, cap: int | None, seed: int) -> None:
        self.cap = cap
        self.gen = torch.Generator().manual_seed(int(seed))
        self.keys = torch.empty(0)
        self.cols: dict[str, torch.Tensor] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}
        self.seen = 0

    def offer(self, n: int, take) -> None:
        """Offer ``n`` rows; ``take(index)`` returns the columns of the rows ``index`` (a 1-D long tensor).

        Only the candidates that can enter the sample are materialised.
        """
        if n == 0:
            return
        self.seen += n
        if self.cap is None:
            cols = take(torch.arange(n))
            for k, v in cols.items():
                self._pending.setdefault(k, []).append(v)
            return
        keys = torch.rand(n, generator=self.gen)
        idx = torch.arange(n)
        if self.keys.numel() >= self.cap:
            thr = self.keys.max()
            sel = keys < thr
            idx, keys = idx[sel], keys[sel]
            if idx.numel() > self.cap:
                keep = keys.topk(self.cap, largest=False).indices
                idx, keys = idx[keep], keys[keep]
        elif idx.numel() > self.cap:
            keep = keys.topk(self.cap, largest=False).indices
            idx, keys = idx[keep], keys[keep]
        if idx.numel() == 0:
            return
        new = take(idx)
        all_keys = torch.cat([self.keys, keys])
        merged = {k: torch.cat([self.cols[k], v]) if k in self.cols else v for k, v in new.items()}
        if all_keys.numel() > self.cap:
            keep = all_keys.topk(self.cap, largest=False).indices
            all_keys = all_keys[keep]
            merged = {k: v[keep] for k, v in merged.items()}
        self.keys, self.cols = all_keys, merged

    def get(self, name: str) -> torch.Tensor | None:
        if self._pending:
            for k, parts in self._pending.items():
                self.cols[k] = torch.cat(([self.cols[k]] if k in self.cols else []) + parts)
            self._pending = {}
        return self.cols.get(name)

    def __len__(self) -> int:
        if self._pending:
            self.get("")  # merge the pending parts
        first = next(iter(self.cols.values()), None)
        return 0 if first is None else int(first.shape[0])


def flat_rows(pred, mask: torch.Tensor | None):
    """Index helpers for the rows (pixels) of a batch: ``(positions, log_probs (N, C, L), L)``;
    ``positions`` are the flat indices of the rows where ``mask`` holds (every row without one)."""
    lp = pred.log_probs
    n, c = lp.shape[:2]
    flat = lp.reshape(n, c, -1)
    positions = torch.arange(flat.shape[0] * flat.shape[2]) if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    return positions, flat, flat.shape[2]


def take_rows(flat, L, positions, scores, y=None, anomaly=None, offset=0, logits=True):
    """The columns :meth:`Reservoir.offer` keeps for the chosen rows: ``s:SCORE``, ``logits`` (M, C)
    and ``group`` (the image index, shifted by ``offset``), ``y``, ``anomaly``."""

    def take(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        pos = positions[idx]
        n, l_ = pos // L, pos % L
        cols = {f"s:{k}": v.reshape(-1)[pos] for k, v in scores.items()}
        if logits:
            cols["logits"] = flat[n, :, l_]
            cols["group"] = n + offset
        if y is not None:
            cols["y"] = y.reshape(-1)[pos]
        if anomaly is not None:
            cols["anomaly"] = anomaly.reshape(-1)[pos]
        return cols

    return take


def per_row(scores: dict[str, torch.Tensor], want: int) -> dict[str, torch.Tensor]:
    """The scores with one value per row (``want`` values), as float32."""
    return {k: v.float() for k, v in scores.items() if v.numel() == want}


def sampled_scores(sample: Reservoir, order) -> dict[str, torch.Tensor]:
    """The score columns of a sample, in ``order`` (the vocabulary's display order)."""
    return {k: sample.get(f"s:{k}") for k in order if sample.get(f"s:{k}") is not None}
