"""Claims from the literature, checked against a run's per-seed numbers.

Each claim is a pure function of one seed's ``methods`` mapping (the schema's MethodResults)
returning ``True`` (holds in that seed), ``False`` (does not) or ``None`` (not measured: the
methods or numbers it needs are missing). :func:`verdict` turns the per-seed outcomes into the
table's word, by one rule for every claim:

* ``"holds"``: measured in at least two seeds and holds in every one of them;
* ``"does not hold"``: measured in at least two seeds and fails in every one;
* ``"inconclusive"``: holds in some seeds and fails in others;
* one measured seed: ``"holds in this seed (1 seed: inconclusive)"`` or ``"does not hold in this
  seed (1 seed: inconclusive)"``; no measured seed: ``"not measured"``.

All comparisons are strict (a tie does not make a claim hold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ._text import seed_results

__all__ = [
    "Finding", "CLAIMS", "verdict", "findings", "ts_lowers_ece", "ensemble_best_nll",
    "calibration_degrades_under_shift", "ensemble_degrades_least", "mi_detects_ood", "members",
]

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


def verdict(outcomes: Sequence[bool | None]) -> str:
    """The table's word for per-seed outcomes (``None`` = not measured in that seed).

    Example:
        >>> verdict([True, True, True]), verdict([True, False]), verdict([False, None, False])
        ('holds', 'inconclusive', 'does not hold')
        >>> verdict([True])
        'holds in this seed (1 seed: inconclusive)'
    """
    measured = [bool(o) for o in outcomes if o is not None]
    if not measured:
        return NOT_MEASURED
    if len(measured) == 1:
        return f"{HOLDS if measured[0] else FAILS} in this seed (1 seed: inconclusive)"
    if all(measured):
        return HOLDS
    if not any(measured):
        return FAILS
    return INCONCLUSIVE


def _ece(stats: Mapping | None) -> float | None:
    return ((stats or {}).get("ece") or {}).get("mean")


def ts_lowers_ece(methods: Mapping) -> bool | None:
    """Guo et al. 2017: temperature scaling lowers ECE, for every method with both numbers."""
    pairs = []
    for m in methods.values():
        ind = m.get("in_distribution") or {}
        before, after = _ece(ind.get("none") or ind.get("uncalibrated")), _ece(ind.get("temperature"))
        if before is not None and after is not None:
            pairs.append(after < before)
    return all(pairs) if pairs else None


def members(m: Mapping) -> int:
    """How many members a method's results record (``traits.members``, or the per-member metrics
    ``compare`` writes for an ensemble); 0 when none are recorded. Never read from the name."""
    traits = m.get("traits") or {}
    n = traits.get("members") if isinstance(traits, Mapping) else None
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    return len(m.get("members") or [])


def _ensembles(methods: Mapping) -> list[str]:
    """The methods recorded as ensembles (``traits.family == "ensemble"`` or two or more members),
    whatever they are called."""
    return [n for n, m in methods.items()
            if (m.get("traits") or {}).get("family") == "ensemble" or members(m) >= 2]


def _best_nll(m: Mapping) -> float | None:
    vals = [((s or {}).get("nll") or {}).get("mean") for s in (m.get("in_distribution") or {}).values()]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def ensemble_best_nll(methods: Mapping) -> bool | None:
    """Lakshminarayanan et al. 2017 / Ashukha et al. 2020: the deep ensemble has the lowest NLL.

    Each method's lowest NLL over its calibrations; the ensemble's must be below every other's.
    """
    ens = [v for v in (_best_nll(methods[n]) for n in _ensembles(methods)) if v is not None]
    others = [v for n, m in methods.items() if n not in _ensembles(methods) for v in [_best_nll(m)] if v is not None]
    if not ens or not others:
        return None
    return min(ens) < min(others)


def _shift_ece(m: Mapping) -> tuple[float, float, float] | None:
    """(clean ECE, mean ECE over all shifted sets, mean ECE at the highest severity) of one method."""
    rows = [r for rs in (m.get("shift") or {}).values() for r in rs if r.get("ece") is not None]
    clean = [r["ece"] for r in rows if r["severity"] == 0]
    clean_ece = clean[0] if clean else (m.get("metrics") or {}).get("ece")
    shifted = [r for r in rows if r["severity"] >= 1]
    if clean_ece is None or not shifted:
        return None
    top = max(r["severity"] for r in shifted)
    at_top = [r["ece"] for r in shifted if r["severity"] == top]
    return clean_ece, sum(r["ece"] for r in shifted) / len(shifted), sum(at_top) / len(at_top)


def calibration_degrades_under_shift(methods: Mapping) -> bool | None:
    """Ovadia et al. 2019: ECE at the strongest shift (mean over kinds) exceeds the clean ECE, for every method."""
    found = [s for s in (_shift_ece(m) for m in methods.values()) if s is not None]
    return all(top > clean for clean, _, top in found) if found else None


def ensemble_degrades_least(methods: Mapping) -> bool | None:
    """Ovadia et al. 2019: the ensemble's ECE grows least under shift (mean shifted ECE − clean ECE)."""
    growth = {n: s[1] - s[0] for n, m in methods.items() for s in [_shift_ece(m)] if s is not None}
    ens = [growth[n] for n in _ensembles(methods) if n in growth]
    others = [g for n, g in growth.items() if n not in _ensembles(methods)]
    if not ens or not others:
        return None
    return min(ens) < min(others)


def mi_detects_ood(methods: Mapping) -> bool | None:
    """Gal 2016: mutual information detects OOD inputs: AUROC > 0.5 for every method that offers it."""
    aurocs = [((m.get("ood") or {}).get("mutual_information") or {}).get("auroc") for m in methods.values()]
    aurocs = [a for a in aurocs if a is not None]
    return all(a > 0.5 for a in aurocs) if aurocs else None


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    rule: str
    test: Callable[[Mapping], bool | None]


CLAIMS = (
    Claim("temperature scaling lowers ECE", "Guo et al. 2017",
          "ECE after temperature scaling < uncalibrated ECE, for every method", ts_lowers_ece),
    Claim("deep ensembles have the best NLL", "Lakshminarayanan et al. 2017; Ashukha et al. 2020",
          "the ensemble's lowest NLL (over calibrations) < every other method's", ensemble_best_nll),
    Claim("calibration degrades under shift", "Ovadia et al. 2019",
          "ECE at the strongest shift (mean over kinds) > clean ECE, for every method",
          calibration_degrades_under_shift),
    Claim("ensembles degrade least under shift", "Ovadia et al. 2019",
          "the ensemble's rise in ECE (mean over shifted sets − clean) < every other method's",
          ensemble_degrades_least),
    Claim("mutual information detects OOD inputs", "Gal 2016",
          "OOD AUROC of mutual information > 0.5, for every method that offers it", mi_detects_ood),
)


@dataclass(frozen=True)
class Finding:
    """One row of the findings table."""

    claim: str
    source: str
    rule: str
    outcomes: tuple[bool | None, ...]
    seeds: tuple[str, ...]
    verdict: str

    @property
    def evidence(self) -> str:
        measured = [(s, o) for s, o in zip(self.seeds, self.outcomes) if o is not None]
        if not measured:
            return "not measured (the methods or numbers it needs are missing)"
        yes = [s for s, o in measured if o]
        text = f"holds in {len(yes)} of {len(measured)} seed{'s' if len(measured) > 1 else ''}"
        if 0 < len(yes) < len(measured):
            text += f" (seed{'s' if len(yes) > 1 else ''} {', '.join(yes)})"
        return text


def findings(results: Mapping, claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    """Every claim of ``claims`` checked in every seed of ``results`` (one seed for a plain run).

    Example:
        >>> from netuq.report import example_results
        >>> f = findings(example_results(seeds=2))[0]
        >>> f.claim, f.verdict
        ('temperature scaling lowers ECE', 'holds')
    """
    per_seed = seed_results(results)
    if results.get("seeds"):
        names = tuple(str(k) for k in results["seeds"])
    else:
        names = (str((results.get("config") or {}).get("seed", 0)),)
    out = []
    for c in claims:
        outcomes = tuple(c.test(r.get("methods") or {}) for r in per_seed)
        out.append(Finding(c.claim, c.source, c.rule, outcomes, names, verdict(outcomes)))
    return out
