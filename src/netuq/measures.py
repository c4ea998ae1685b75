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
    """H(p) = Σ −p log p over ``dim``, in float32/float64 (``entr``: 0 at p = 0, and +0.0, never
    −0.0, for a one-hot row). Shared with :class:`netuq.Prediction`."""
    return torch.special.entr(probs.to(float_dtype(probs))).sum(dim)


def _add_votes(votes: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Add each sample's argmax to ``votes`` in place and return it. Shared with :class:`netuq.Prediction`.

    ``samples`` is (S, N, C, ...) (probabilities, logits or log-probabilities: only the argmax,
    the first maximal class, is used) and ``votes`` an (N, C, ...) int32 count; the votes are
    scattered, never expanded to an (S, N, ..., C) one-hot.
    """
    idx = samples.max(2).indices.movedim(0, 1)  # (N, S, ...); max().indices: ~5x faster than argmax here
    one = torch.ones((), dtype=votes.dtype, device=votes.device).expand(idx.shape)  # no allocation
    return votes.scatter_add_(1, idx, one)


def _variation_ratio_from_votes(votes: torch.Tensor, num_samples: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, ...) 1 − (votes of the modal class) / S from (N, C, ...) vote counts."""
    return 1.0 - votes.amax(1).to(dtype) / num_samples


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
    """Mutual information H[p̄] − E_s H[p_s] (BALD): the *epistemic* part.

    Computed as the mean Kullback-Leibler divergence E_s KL(p_s ‖ p̄), which equals H[p̄] − E_s H[p_s]
    but has no cancellation between two large entropies. The mean is taken as
    p̄ = p_1 + E_s (p_s − p_1), so identical samples give p̄ = p_s bit for bit, every log ratio is
    log 1 = 0, and the result is exactly 0; negative rounding residues are clamped to 0.

    Args:
        samples: (S, N, C, ...) probabilities.
        validate_args: check that ``samples`` are probabilities summing to 1 over C (dim 2).

    Returns:
        (N, ...) mutual information in [0, log C] (float32, float64 for float64 input); exactly 0
        for identical samples.

    Example:
        >>> s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> mutual_information(s)
        tensor([0.6931])
    """
    if validate_args:
        samples = check_probs(samples, "samples", dim=2, min_ndim=3)
    s = samples.to(float_dtype(samples))
    first = s[:1]
    mean = first + (s - first).mean(0, keepdim=True)  # identical samples: exactly p_1
    # A mean that rounded to <= 0 next to a positive (subnormal) p: the smallest normal number keeps it finite.
    mean = torch.where(mean > 0, mean, torch.finfo(s.dtype).tiny)
    kl = torch.where(s > 0, s * torch.log(s / mean), 0.0).sum(2)  # p log(p / p̄), with 0 log 0 = 0
    return kl.mean(0).clamp_min(0.0)


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
    votes = _add_votes(torch.zeros(samples.shape[1:], dtype=torch.int32, device=samples.device), samples)
    return _variation_ratio_from_votes(votes, samples.shape[0], float_dtype(samples))


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
