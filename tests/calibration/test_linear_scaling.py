"""Vector and matrix scaling at scale: the solver against an independent scipy reference, its
objective against autograd, the memory it needs and the refusal of sizes the machine cannot hold."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from netuq import _memory
from netuq.calibration import MatrixScaling, TemperatureScaling, VectorScaling
from netuq.calibration._solvers import SoftmaxLinearObjective
from netuq.exceptions import NotEnoughMemoryError


def logits(n, c, seed, scale=3.0, margin=2.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g) + margin * F.one_hot(y, c)
    return (scale * z).float(), y


def _beta(z, y, smoothing=0.0):
    from reference.calibration_reference import temperature_reference

    T, _ = temperature_reference(z.double().numpy(), y.numpy(), bounds=(0.01, 100.0), smoothing=smoothing)
    return 1.0 / T


CASES = [  # (kind, penalty, n, c, seed)
    ("vector", 0.1, 300, 5, 0),
    ("vector", None, 400, 4, 1),
    ("vector", 3.0, 200, 8, 2),
    ("matrix", (1.0, 1.0), 300, 4, 3),
    ("matrix", (0.1, 10.0), 400, 5, 4),
    ("matrix", (100.0, 0.01), 250, 6, 5),
    ("matrix", None, 600, 3, 6),
]


@pytest.mark.parametrize("kind,penalty,n,c,seed", CASES)
def test_fit_reaches_the_independent_optimum(kind, penalty, n, c, seed):
    from reference import linear_scaling_reference as ref

    z, y = logits(n, c, seed)
    beta = _beta(z, y)
    if kind == "vector":
        cal = VectorScaling(l2=penalty).fit(z, y)
        theta = np.concatenate([cal.weight_.numpy(), cal.bias_.numpy()])
    else:
        cal = MatrixScaling(odir=penalty).fit(z, y)
        theta = np.concatenate([cal.weight_.numpy().ravel(), cal.bias_.numpy()])
    zn, yn = z.double().numpy(), y.numpy()
    ours = ref.objective(theta, zn, yn, kind, penalty, beta)[0]
    theta_ref, best = ref.minimise(zn, yn, kind, penalty, beta)
    assert ours - best <= 1e-9, (ours, best)  # the same penalised optimum (or a lower one)
    nll_ref = ref.nll(zn @ theta_ref[: c * c].reshape(c, c).T + theta_ref[c * c :] if kind == "matrix"
                      else zn * theta_ref[:c] + theta_ref[c:], yn)
    assert abs(cal.nll_after_ - nll_ref) <= 1e-6
    assert cal.converged_


def test_separable_fit_reaches_the_smoothed_reference_optimum():
    from reference import linear_scaling_reference as ref

    z, y = logits(120, 4, 7, scale=4.0, margin=6.0)
    assert bool((z.argmax(1) == y).all())
    eps = 1.0 / (len(y) + 2)
    beta = _beta(z, y, smoothing=eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = MatrixScaling(odir=(1.0, 1.0)).fit(z, y)
    theta = np.concatenate([cal.weight_.numpy().ravel(), cal.bias_.numpy()])
    zn, yn = z.double().numpy(), y.numpy()
    smooth = eps * 4 / 3  # torch's label_smoothing for the target 1 − ε on the label
    ours = ref.objective(theta, zn, yn, "matrix", (1.0, 1.0), beta, smooth)[0]
    assert ours - ref.minimise(zn, yn, "matrix", (1.0, 1.0), beta, smooth)[1] <= 1e-9


def test_reference_gradient_is_the_finite_difference_one():
    from reference import linear_scaling_reference as ref
    from scipy.optimize import check_grad

    z, y = logits(50, 3, 8)
    zn, yn = z.double().numpy(), y.numpy()
    rng = np.random.default_rng(0)
    for kind, pen, size in (("vector", 0.5, 6), ("matrix", (2.0, 0.5), 12)):
        theta = rng.normal(size=size)
        args = (zn, yn, kind, pen, 0.7, 0.1)
        err = check_grad(lambda t, a=args: ref.objective(t, *a)[0], lambda t, a=args: ref.objective(t, *a)[1], theta)
        assert err < 1e-5


@given(st.integers(1, 60), st.integers(2, 7), st.sampled_from(["vector", "matrix"]), st.floats(0.0, 0.3),
       st.integers(1, 3))
def test_objective_matches_autograd_for_any_chunking(n, c, kind, eps, pieces):
    g = torch.Generator().manual_seed(n * 31 + c)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    size = c * c + c if kind == "matrix" else 2 * c
    x = torch.randn(size, generator=g, dtype=torch.float64)
    cuts = torch.tensor_split(torch.arange(n), pieces)
    obj = SoftmaxLinearObjective(tuple(z[i] for i in cuts), tuple(y[i] for i in cuts), kind, eps)
    obj.rows = max(1, n // 4)  # several chunks per piece
    f, grad, hdiag = obj(x, diag=True)

    def loss(v):
        a = z @ v[: c * c].view(c, c).t() + v[c * c :] if kind == "matrix" else z * v[:c] + v[c:]
        return F.cross_entropy(a, y, label_smoothing=eps)

    xr = x.clone().requires_grad_(True)
    want = loss(xr)
    want.backward()
    assert f == pytest.approx(want.detach().item(), abs=1e-12)
    torch.testing.assert_close(grad, xr.grad, rtol=1e-10, atol=1e-12)
    h = torch.autograd.functional.hessian(loss, x)
    torch.testing.assert_close(hdiag, h.diagonal(), rtol=1e-9, atol=1e-12)


@given(st.integers(1, 40), st.integers(2, 6), st.sampled_from(["vector", "matrix"]), st.floats(0.0, 0.3),
       st.integers(0, 10**6))
def test_objective_with_masked_classes_matches_autograd_of_the_masked_loss(n, c, kind, eps, seed):
    # Reference written directly: masked entries enter the map as 0 and leave it as -inf; the target
    # is 1 - eps' on the label and eps'/(k - 1) on each other unmasked class (eps' = eps (C - 1) / C).
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    mask = torch.rand(n, c, generator=g) < 0.4
    mask[torch.arange(n), y] = False  # never the label
    z = z.masked_fill(mask, float("-inf"))
    size = c * c + c if kind == "matrix" else 2 * c
    x = torch.randn(size, generator=g, dtype=torch.float64)
    obj = SoftmaxLinearObjective(z, y, kind, eps)
    obj.rows = max(1, n // 3)
    f, grad, hdiag = obj(x, diag=True)
    live = (~mask).double()
    k = live.sum(1, keepdim=True)
    e = eps * (c - 1) / c
    other = torch.where(k > 1, e / (k - 1).clamp_min(1), torch.zeros_like(k))
    target = live * other
    target[torch.arange(n), y] = (1 - other * (k - 1)).squeeze(1)
    z0 = z.masked_fill(mask, 0.0)

    def loss(v):
        a = z0 @ v[: c * c].view(c, c).t() + v[c * c :] if kind == "matrix" else z0 * v[:c] + v[c:]
        logp = torch.log_softmax(a.masked_fill(mask, float("-inf")), 1).masked_fill(mask, 0.0)
        return -(target * logp).sum(1).mean()

    xr = x.clone().requires_grad_(True)
    want = loss(xr)
    want.backward()
    assert f == pytest.approx(want.detach().item(), abs=1e-12)
    torch.testing.assert_close(grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hdiag, torch.autograd.functional.hessian(loss, x).diagonal(), rtol=1e-9, atol=1e-12)
    assert torch.isneginf(obj.logits(x, z)[mask]).all()


def test_auto_search_final_fit_is_the_optimum_at_the_chosen_penalty():
    from reference import linear_scaling_reference as ref

    z, y = logits(600, 5, 9, scale=2.5, margin=1.5)
    cal = MatrixScaling().fit(z, y)
    assert cal.odir_ in cal.odir_scores_ and cal.odir_scores_[cal.odir_] == min(cal.odir_scores_.values())
    beta = _beta(z, y)
    theta = np.concatenate([cal.weight_.numpy().ravel(), cal.bias_.numpy()])
    zn, yn = z.double().numpy(), y.numpy()
    ours = ref.objective(theta, zn, yn, "matrix", cal.odir_, beta)[0]
    assert ours - ref.minimise(zn, yn, "matrix", cal.odir_, beta)[1] <= 1e-9


def test_fits_are_invariant_to_row_order_within_the_optimum():
    z, y = logits(500, 4, 10)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    a = MatrixScaling(odir=(1.0, 1.0)).fit(z, y)
    b = MatrixScaling(odir=(1.0, 1.0)).fit(z[perm], y[perm])
    assert abs(a.nll_after_ - b.nll_after_) < 1e-9
    torch.testing.assert_close(a.weight_, b.weight_, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- memory
def test_memory_estimate_is_linear_in_n_and_quadratic_in_c_never_n_c_squared():
    for cls in (VectorScaling, MatrixScaling):
        need = cls.memory_needed(50_000, 1000)
        assert need < 8 * 50_000 * 1000 * 1000 / 20  # far below one N x C x C float64 tensor
        assert cls.memory_needed(100_000, 1000) - need == pytest.approx(8 * 3 * 50_000 * 1000, rel=0.01)
    assert MatrixScaling.memory_needed(1000, 20_000) > 8 * 20_000**2 * 20  # the C² vectors of L-BFGS
    assert VectorScaling.memory_needed(1000, 20_000) < 8 * 1000 * 20_000 * 6


def test_a_size_the_machine_cannot_hold_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda: 2**20)
    z, y = logits(2000, 100, 11)
    calls = []
    monkeypatch.setattr(MatrixScaling, "_fit", lambda self, *a: calls.append(1))
    with pytest.raises(NotEnoughMemoryError, match=r"MatrixScaling on 2000 x 100 logits needs about .* GiB, but only"
                       r" 0.0 GiB") as info:
        MatrixScaling().fit(z, y)
    assert "\n" not in str(info.value) and not calls and isinstance(info.value, ValueError)
    TemperatureScaling().fit(z, y)  # no estimate: not refused
    monkeypatch.setattr(_memory, "available_memory", lambda: VectorScaling.memory_needed(2000, 100))
    VectorScaling(l2=1.0).fit(z, y)  # exactly enough: fitted


def test_cli_calibrate_matrix_refuses_in_one_line(monkeypatch, tmp_path, capsys):
    from netuq.cli import main

    z, y = logits(400, 20, 12)
    np.savez(tmp_path / "p.npz", logits=z.numpy(), labels=y.numpy())
    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    assert main(["calibrate", str(tmp_path / "p.npz"), "--method", "matrix"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("netuq: error: MatrixScaling on 400 x 20 logits needs about") and "\n" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from getrusage in KiB on Linux")
def test_peak_memory_of_a_matrix_fit_stays_within_the_estimate():
    code = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from netuq.calibration import MatrixScaling
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 300, (1000,), generator=g)
        z = (torch.randn(1000, 300, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 300)).float()
        MatrixScaling(odir=(1.0, 1.0)).fit(z[:50], y[:50])  # warm up allocators and code paths
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        MatrixScaling(odir=(10.0, 10.0), max_iter=20).fit(z, y)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    grew = int(out.stdout.strip().splitlines()[-1])
    need = MatrixScaling.memory_needed(1000, 300)
    assert grew <= need + 16 * 2**20, (grew, need)
    assert grew < 8 * 1000 * 300 * 300 / 10  # nothing of size N x C x C (720 MB here)


def test_cross_validate_passes_the_memory_refusal_through_unwrapped(monkeypatch):
    from netuq.calibration import cross_validate

    monkeypatch.setattr(_memory, "available_memory", lambda: 1000)
    z, y = logits(100, 5, 13)
    with pytest.raises(NotEnoughMemoryError, match="^VectorScaling on 50 x 5 logits"):
        cross_validate(VectorScaling, z, y, repeats=1)
