"""MC dropout: seeded masks independent of ``max_batch`` in every dropout-input layout, and gradients
(``no_grad=False``) refused through activation checkpointing rather than computed wrong (issue 22)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import netuq


class Layouts(nn.Module):
    """(N, T, F) input; the dropout input in one of several layouts the model moves its batch to."""

    def __init__(self, layout: str, drop: str, t: int = 5) -> None:
        super().__init__()
        self.layout, self.how, self.t = layout, drop, t
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 3)
        self.drop = {"module": nn.Dropout(0.5), "alpha": nn.AlphaDropout(0.5), "feature": nn.Dropout1d(0.5)}.get(drop)

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if self.how == "functional":
            return F.dropout(h, 0.5, self.training)
        return self.drop(h)

    def forward(self, x):  # x (N, T, F)
        h = self.lin(x)
        n = h.shape[0]
        if self.layout == "batch_first":  # (N, T, F)
            h = self._dropout(h)
        elif self.layout == "sequence_first":  # (T, N, F): nn.Transformer/RNN batch_first=False style
            h = self._dropout(h.transpose(0, 1)).transpose(0, 1)
        elif self.layout == "sequence_first_copy":  # (T, N, F) made contiguous
            h = self._dropout(h.transpose(0, 1).contiguous()).transpose(0, 1)
        elif self.layout == "flattened":  # (N·T, F): no dimension of N rows
            h = self._dropout(h.reshape(-1, 6)).reshape(n, -1, 6)
        elif self.layout == "feature_last":  # (F, T, N)
            h = self._dropout(h.permute(2, 1, 0).contiguous()).permute(2, 1, 0)
        return self.out(h).mean(1)


LAYOUTS = ["batch_first", "sequence_first", "sequence_first_copy", "flattened", "feature_last"]


def _one_per_forward(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """The reference: every sample in a forward of its own (nothing to split between samples)."""
    return netuq.MCDropout(model, samples=samples, seed=7, keep_samples=True, max_batch=len(x))(x).samples


@settings(max_examples=12)
@given(
    layout=st.sampled_from(LAYOUTS),
    drop=st.sampled_from(["module", "functional", "alpha", "feature"]),
    n=st.integers(1, 4),
    max_batch=st.integers(1, 40),
)
def test_seeded_masks_do_not_depend_on_max_batch_in_any_layout(layout, drop, n, max_batch):
    """Issue 22 item 9: a sequence-first dropout input (T, N, F) gave 0.30772 / 0.30767 / 0.30591
    for three max_batch values. Every sample's masks must be those it gets alone in a forward."""
    torch.manual_seed(0)
    model = Layouts(layout, drop).eval()
    x = torch.randn(n, 5, 6)
    ref = _one_per_forward(model, x, 7)
    got = netuq.MCDropout(model, samples=7, seed=7, keep_samples=True, max_batch=max(max_batch, n))(x).samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    default = netuq.MCDropout(model, samples=7, seed=7, keep_samples=True)(x).samples  # max_batch=None
    torch.testing.assert_close(default, ref, atol=1e-6, rtol=0)


def test_a_sequence_as_long_as_the_stacked_rows_is_not_mistaken_for_them():
    """T = k·N: two dimensions of k·N rows. Which is the batch cannot be told, so those samples run
    one per forward rather than drawing masks that depend on the grouping."""
    torch.manual_seed(0)
    model = Layouts("sequence_first", "module", t=8).eval()
    x = torch.randn(2, 8, 6)  # 4 samples per forward: 8 rows = T
    ref = _one_per_forward(model, x, 8)
    got = netuq.MCDropout(model, samples=8, seed=7, keep_samples=True, max_batch=8)(x).samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_seeded_sequence_first_masks_differ_between_samples():
    """Independent masks per sample (not one mask repeated): the samples are not all equal."""
    torch.manual_seed(0)
    model = Layouts("sequence_first", "module").eval()
    samples = netuq.MCDropout(model, samples=6, seed=1, keep_samples=True, max_batch=24)(torch.randn(4, 5, 6)).samples
    assert all(not torch.equal(samples[0], samples[s]) for s in range(1, 6))


# ----------------------------------------------------------------------------- gradients
class Checkpointed(nn.Module):
    """``block`` under torch.utils.checkpoint (``reentrant`` True / False; None: no checkpoint)."""

    def __init__(self, block: nn.Module, reentrant: bool | None) -> None:
        super().__init__()
        self.block, self.reentrant = block, reentrant
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x):
        h = self.block(x) if self.reentrant is None else checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.head(h)


def _input_grad(model: nn.Module, x: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
    x = x.clone().requires_grad_()
    torch.manual_seed(3)  # the global stream, for seed=None
    pred = netuq.MCDropout(model, samples=6, seed=seed, no_grad=False, max_batch=12)(x)  # no dry run
    pred.probs[:, 0].sum().backward()
    return x.grad


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("seed", [0, None])
def test_checkpointing_a_deterministic_block_gives_the_reference_gradient(reentrant, seed):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    x = torch.randn(5, 4)
    model = Checkpointed(block, None).eval()
    ref = _input_grad(model, x, seed)
    model.reentrant = reentrant
    got = _input_grad(model, x, seed)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert got.abs().amax() > 1e-3  # a gradient that says something


@pytest.mark.parametrize("reentrant", [True, False, "sequential"])
@pytest.mark.parametrize("seed", [0, None])
def test_checkpointing_around_dropout_is_refused_not_differentiated_wrong(reentrant, seed):
    """Issue 22 item 8: backward recomputes the checkpointed block after sampling has switched
    dropout off: wrong input gradients (reentrant, off by 0.015) or torch's CheckpointError."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 8))
    if reentrant == "sequential":

        class Seq(Checkpointed):
            def forward(self, x):
                return self.head(checkpoint_sequential(self.block, 2, x, use_reentrant=False))

        model = Seq(block, None).eval()
    else:
        model = Checkpointed(block, reentrant).eval()
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match=r"no_grad=False\)` cannot keep gradients through activation checkpointing"):
        _input_grad(model, torch.randn(5, 4), seed)
    assert [m.training for m in model.modules()] == flags  # modes restored on the error
    # the same model without a graph samples as usual (nothing is recomputed)
    pred = netuq.MCDropout(model, samples=4, seed=0)(torch.randn(5, 4))
    assert pred.probs.shape == (5, 3)


def test_checkpointing_functional_dropout_and_switched_batchnorm_is_refused():
    """Also a functional dropout call in the checkpointed block, and a BatchNorm in training mode
    there (sampling runs it in eval mode; the recompute would not)."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)

        def forward(self, x):
            return F.dropout(self.lin(x), 0.3, self.training)

    x = torch.randn(5, 4)
    for block, train in ((Functional(), False), (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), True)):
        model = Checkpointed(block, False).train(train)
        with pytest.raises(RuntimeError, match="activation checkpointing"):
            _input_grad(model, x)


# ----------------------------------------------------------------------------- compiled models
@pytest.mark.slow  # torch.compile traces the model (dynamo): a few seconds
def test_a_compiled_model_is_sampled_as_the_uncompiled_one_and_not_reported():
    """The warning said dropout in compiled modules cannot be switched on; it is (through
    ``_orig_mod``), and seeded or unseeded the samples are the uncompiled model's (eager backend:
    the same kernels; inductor was measured bit-identical with a seed)."""
    import warnings

    torch.manual_seed(0)
    model = Checkpointed(nn.Linear(6, 8), None).eval()  # not a Sequential: sampled whole, as compiled
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 6)
    for seed in (0, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning
            torch.manual_seed(1)
            got = netuq.MCDropout(compiled, samples=6, seed=seed, keep_samples=True, max_batch=9)(x).samples
        torch.manual_seed(1)
        ref = netuq.MCDropout(model, samples=6, seed=seed, keep_samples=True, max_batch=9)(x).samples
        assert torch.equal(got, ref) and float(ref.std(0).amax()) > 0
