"""Separating two sets of scores: OOD detection and misclassification detection.

Each function takes the scores of the *positive* set and of the *negative* set; a higher score
should mean "more likely positive". Typical uses:

* OOD detection with an uncertainty score: ``auroc(entropy_ood, entropy_in)`` (OOD = positive).
* OOD detection with a confidence score: ``auroc(maxprob_in, maxprob_ood)`` (in-distribution
  positive, the convention of Hendrycks & Gimpel 2017 for FPR at 95% TPR).
* Misclassification detection: ``auroc(uncertainty[wrong], uncertainty[correct])``.

Scores of any shape are flattened (a segmentation map contributes one score per pixel).
"""

from __future__ import annotations

import numbers

import torch

from .._checks import check_scores

__all__ = ["auroc", "aupr", "fpr_at_tpr", "roc_curve"]


def _sorted_counts(positive, negative):
    pos = check_scores(positive, "positive").to(torch.float64)
    neg = check_scores(negative, "negative").to(torch.float64)
    scores = torch.cat([pos, neg.to(pos.device)])
    is_pos = torch.cat([torch.ones_like(pos), torch.zeros_like(neg.to(pos.device))])
    order = torch.argsort(scores, descending=True, stable=True)
    scores, is_pos = scores[order], is_pos[order]
    # Thresholds at distinct score values: the last index of each run of ties.
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp = torch.cumsum(is_pos, 0)[last]
    fp = torch.cumsum(1.0 - is_pos, 0)[last]
    return tp, fp, float(pos.numel()), float(neg.numel())


def roc_curve(positive, negative) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC curve ``(fpr, tpr)`` over all distinct thresholds, starting at (0, 0).

    Every distinct score is a threshold (tied scores form one point), as scikit-learn's
    ``roc_curve(..., drop_intermediate=False)`` with the positives labelled 1 (Fawcett 2006).

    Args:
        positive: scores of the positive set, any shape (flattened), higher = more positive.
        negative: scores of the negative set, any shape (flattened).

    Returns:
        ``(fpr, tpr)``, each a float64 tensor of shape (T + 1,) with T the number of distinct
        scores: the false- and true-positive rates at each threshold, from (0, 0) to (1, 1).

    Example:
        >>> fpr, tpr = roc_curve(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    tp, fp, n_pos, n_neg = _sorted_counts(positive, negative)
    zero = torch.zeros(1, dtype=torch.float64, device=tp.device)
    return torch.cat([zero, fp / n_neg]), torch.cat([zero, tp / n_pos])


def auroc(positive, negative) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ½ P(tie).

    Equals scikit-learn's ``roc_auc_score`` with the positives labelled 1.

    Args:
        positive: scores of the positive set, any shape (flattened).
        negative: scores of the negative set, any shape (flattened).

    Example:
        >>> auroc(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1]))
        0.75
    """
    fpr, tpr = roc_curve(positive, negative)
    return float(torch.trapezoid(tpr, fpr))


def aupr(positive, negative) -> float:
    """Area under the precision-recall curve of the positive set, as average precision.

    AP = Σ_k (R_k − R_{k−1}) P_k over distinct thresholds, equal to scikit-learn's
    ``average_precision_score``. Its chance level is the positive fraction.

    Args:
        positive: scores of the positive set, any shape (flattened), higher = more positive.
        negative: scores of the negative set, any shape (flattened).

    Returns:
        The average precision as a float in [0, 1].

    Example:
        >>> round(aupr(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1])), 4)
        0.8333
    """
    tp, fp, n_pos, _ = _sorted_counts(positive, negative)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64, device=recall.device), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def fpr_at_tpr(positive, negative, *, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``.

    The usual OOD figure "FPR at 95% TPR" (Hendrycks & Gimpel 2017; Liang et al. 2018).

    Args:
        positive: scores of the positive set, any shape (flattened), higher = more positive.
        negative: scores of the negative set, any shape (flattened).
        tpr: the true-positive rate to reach, a number in (0, 1].

    Returns:
        The false-positive rate as a float in [0, 1].

    Raises:
        TypeError: ``tpr`` is not a real number.
        ValueError: ``tpr`` is outside (0, 1].

    Example:
        >>> fpr_at_tpr(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1]), tpr=0.95)
        0.5
    """
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real):
        raise TypeError(f"`tpr` must be a number in (0, 1], got {type(tpr).__name__}")
    if not 0.0 < float(tpr) <= 1.0:
        raise ValueError(f"`tpr` must be in (0, 1], got {tpr!r}")
    fpr_curve, tpr_curve = roc_curve(positive, negative)
    reached = torch.nonzero(tpr_curve >= float(tpr) - 1e-12)
    return float(fpr_curve[reached[0, 0]])
