"""Uncertainty measures computed from probabilities or from samples of probabilities.

Shapes: ``probs`` is (N, C, ...) and ``samples`` is (S, N, C, ...); every measure reduces over the
class dimension C (and over S for sample measures) and keeps N and any spatial axes, so the result
is (N,) for classification and (N, H, W) for segmentation. Half-precision inputs are computed in
float32. References: Gal (2016) §3.3.1; Depeweg et al. (2018) for the decomposition
total = aleatoric + epistemic.
"""

from __future__ import annotations

import torch

from ._checks import check_probs, float_dtype

__all__ = [
    "entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "margin",
    "max_prob",
    "std",
]


def _entropy(probs: torch.Tensor, dim: int) -> torch.Tensor:
    # entr(p) = −p log p with entr(0) = 0; summing gives +0.0 (never −0.0) for a one-hot row.
    return torch.special.entr(probs.to(float_dtype(probs))).sum(dim)


def entropy(probs: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Shannon entropy (nats) of the predictive distribution, the *total* uncertainty.

    Args:
        probs: (N, C, ...) probabilities.

    Returns:
        (N, ...) entropy in [0, log C]; 0·log 0 is taken as 0.

    Example:
        >>> entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor([0.6931, 0.0000])
    """
    if validate_args:
        probs = check_probs(probs)
    return _entropy(probs, 1)


def expected_entropy(samples: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Mean entropy of the individual samples, E_s H[p_s]: the *aleatoric* part.

    Args:
        samples: (S, N, C, ...) probabilities, one slice per stochastic sample.

    Returns:
        (N, ...) expected entropy.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident, disagreeing samples
        >>> expected_entropy(s)
        tensor([0.])
    """
    if validate_args:
        samples = check_probs(samples, "samples", dim=2, min_ndim=3)
    return _entropy(samples, 2).mean(0)


def mutual_information(samples: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Mutual information H[p̄] − E_s H[p_s] (BALD): the *epistemic* part, clamped at 0.

    Args:
        samples: (S, N, C, ...) probabilities.

    Returns:
        (N, ...) mutual information in [0, log C]; exactly 0 for identical samples.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> mutual_information(s)
        tensor([0.6931])
    """
    if validate_args:
        samples = check_probs(samples, "samples", dim=2, min_ndim=3)
    s = samples.to(float_dtype(samples))
    return (_entropy(s.mean(0), 1) - _entropy(s, 2).mean(0)).clamp_min(0.0)


def variation_ratio(samples: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """1 − (count of the modal argmax) / S across samples (Freeman 1965; Gal 2016).

    Only each sample's argmax is used: the votes are counted in an (N, C, ...) int32 tensor
    (``scatter_add_``), never as an (S, N, ..., C) one-hot.

    Args:
        samples: (S, N, C, ...) probabilities. Logits give the same result (the argmax is
            the same) but fail the probability check unless ``validate_args=False``.
        validate_args: check that ``samples`` are probabilities summing to 1 over C (dim 2).

    Returns:
        (N, ...) variation ratio in [0, 1 − 1/C].

    Example:
        >>> s = torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])
        >>> variation_ratio(s)
        tensor([0.2500])
    """
    if validate_args:
        samples = check_probs(samples, "samples", dim=2, min_ndim=3)
    S = samples.shape[0]
    idx = samples.argmax(2).movedim(0, 1)  # (N, S, ...)
    shape = samples.shape[1:]  # (N, C, ...)
    one = torch.ones((), dtype=torch.int32, device=samples.device).expand(idx.shape)  # no allocation
    votes = torch.zeros(shape, dtype=torch.int32, device=samples.device).scatter_add_(1, idx, one)
    return 1.0 - votes.amax(1).to(float_dtype(samples)) / S


def margin(probs: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Difference between the two largest class probabilities (small margin = uncertain).

    Args:
        probs: (N, C, ...) probabilities with C >= 2.

    Returns:
        (N, ...) margin in [0, 1].

    Example:
        >>> margin(torch.tensor([[0.7, 0.2, 0.1]]))
        tensor([0.5000])
    """
    if validate_args:
        probs = check_probs(probs)
    if probs.shape[1] < 2:
        raise ValueError(f"`probs` must have at least 2 classes for a margin, got C={probs.shape[1]}")
    top2 = probs.to(float_dtype(probs)).topk(2, dim=1).values
    return top2.select(1, 0) - top2.select(1, 1)


def max_prob(probs: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Top-1 probability, the confidence of the predicted class (Hendrycks & Gimpel 2017).

    Args:
        probs: (N, C, ...) probabilities.

    Returns:
        (N, ...) maximum probability in [1/C, 1].

    Example:
        >>> max_prob(torch.tensor([[0.7, 0.2, 0.1]]))
        tensor([0.7000])
    """
    if validate_args:
        probs = check_probs(probs)
    return probs.to(float_dtype(probs)).amax(1)


def std(samples: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    """Standard deviation of the probabilities across samples, averaged over classes.

    The population standard deviation (divide by S) of p_s,c, then the mean over c.

    Args:
        samples: (S, N, C, ...) probabilities.

    Returns:
        (N, ...) mean per-class standard deviation.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> std(s)
        tensor([0.5000])
    """
    if validate_args:
        samples = check_probs(samples, "samples", dim=2, min_ndim=3)
    s = samples.to(float_dtype(samples))
    return s.std(0, correction=0).mean(1)
