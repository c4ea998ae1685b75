"""The solvers under the calibrators: safeguarded Newton for the temperature, preconditioned L-BFGS."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netuq.calibration._solvers import TemperatureObjective, lbfgs_minimize, solve_temperature


def logits(n, c, seed, scale=3.0, margin=2.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g) + margin * F.one_hot(y, c)
    return (scale * z).float(), y


def test_lbfgs_minimises_a_quadratic_and_respects_max_iter():
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    fg = lambda x: (float(0.5 * x @ A @ x - x.sum()), A @ x - 1.0)  # noqa: E731
    r = lbfgs_minimize(fg, torch.zeros(3, dtype=torch.float64), precond=A.diagonal(), tol=1e-13)
    torch.testing.assert_close(r.x, torch.linalg.solve(A, torch.ones(3, dtype=torch.float64)))
    assert r.converged and r.evals <= 12
    short = lbfgs_minimize(fg, torch.zeros(3, dtype=torch.float64), max_iter=1, tol=1e-13)
    assert short.iterations == 1 and not short.converged


def test_temperature_newton_from_a_nearby_start_stops_at_a_tiny_step():
    # Regression: from the whole set's beta, a fold's solve reached the optimum in 3 steps, then the
    # next (tiny) Newton step landed on the bracket's end and the solve bisected for 35 more passes.
    z, y = logits(3000, 50, 14, scale=2.0, margin=1.0)
    z = z.double()
    whole = solve_temperature(z, y, beta_min=0.01, beta_max=100.0)
    for k in range(3):
        part = torch.arange(3000) % 3 != k
        near = solve_temperature(z[part], y[part], beta_min=0.01, beta_max=100.0, beta_start=whole.beta)
        plain = solve_temperature(z[part], y[part], beta_min=0.01, beta_max=100.0)
        assert near.status == "converged" and near.passes <= 6, near
        assert near.beta == pytest.approx(plain.beta, rel=1e-9)


def test_temperature_newton_returns_the_latest_iterate_on_a_flat_tie():
    # Regression: at the optimum the NLL is flat to float precision, and an earlier iterate with the
    # same NLL (slope 2e-8) was returned instead of the converged one (slope 2e-10).
    from reference.calibration_reference import temperature_reference

    z, y = logits(3000, 50, 14, scale=2.0, margin=1.0)
    z = z.double()
    whole = solve_temperature(z, y, beta_min=0.01, beta_max=100.0)
    for k in range(3):
        part = torch.arange(3000) % 3 != k
        zp, yp = z[part], y[part]
        near = solve_temperature(zp, yp, beta_min=0.01, beta_max=100.0, beta_start=whole.beta)
        slope = TemperatureObjective(zp - zp.amax(1, keepdim=True), yp)(near.beta)[1]
        assert abs(slope) <= 2e-9, (k, slope)
        T, _ = temperature_reference(zp.numpy(), yp.numpy(), bounds=(0.01, 100.0))
        assert near.beta == pytest.approx(1.0 / T, rel=1e-7)
