"""Bootstrap confidence intervals of the novelty verdict's decisive comparisons: each comparison is a ratio of
medians (generated against originals, or against the reference noise level), recomputed on resamples of the
models, so that a verdict whose interval straddles its threshold says INCONCLUSIVE instead of flipping."""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .types import GroupMetrics
from .verdict import BOOTSTRAP_RESAMPLES, COMPARISONS, CONFIDENCE, GENERATED, ORIGINAL


def _ratio(a: torch.Tensor, b: torch.Tensor, zero_over_zero: float) -> torch.Tensor:
    """``a / b`` elementwise; ``b <= 0`` gives ``inf`` (``zero_over_zero`` when ``a <= 0`` too), as the verdict's
    point values do."""
    inf = torch.full_like(a, float("inf"))
    safe = torch.where(b > 0, b, torch.ones_like(b))
    return torch.where(b > 0, a / safe, torch.where(a > 0, inf, torch.full_like(a, zero_over_zero)))


def _json_number(x: torch.Tensor) -> Optional[float]:
    """A finite value rounded to 6 significant digits; ``None`` (JSON ``null``) for an infinite one."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def bootstrap_intervals(
    groups: Dict[str, GroupMetrics],
    summary: Dict,
    seed: int = 0,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Dict[str, Dict]:
    """Bootstrap percentile intervals of the verdict's decisive comparisons (:data:`~.verdict.COMPARISONS`).

    The models of each group involved (originals, generated, the reference noise amplitudes) are resampled with
    replacement ``num_resamples`` times, independently per group but the same resample for every metric of a group;
    each comparison is recomputed from the resampled medians. The agreement with the mean-checkpoint model also
    resamples the test examples (the same resample for every model): on a near-perfect task it rests on a handful of
    disagreeing examples (the demo: a median of 4-6 of 1,000), whose count is itself a sample. The draws come from a ``torch.Generator`` seeded
    with ``seed`` and the medians from sorting, so the intervals do not depend on the number of torch threads.
    Cheap: a few ``(num_resamples, n)`` quantiles of tensors already computed.

    Returns ``{comparison: {"statistic", "value", "low", "high", "threshold", "confidence", "resamples",
    "outcome"}}``; ``value`` is the comparison on all models, ``outcome`` is ``"below"`` / ``"above"`` the threshold
    or ``"straddles"`` it; an infinite ratio (zero denominator) is ``None``.
    """
    g = torch.Generator().manual_seed(int(seed))
    ref = summary["novelty"].get("reference_noise_interpolation")
    needed = [ORIGINAL, GENERATED] + (list(ref["names"]) if ref else [])
    resample = {
        name: torch.randint(0, groups[name].count, (num_resamples, groups[name].count), generator=g) for name in needed
    }

    def median(name: str, attr: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(median of all models, (num_resamples,) medians of the resamples)``."""
        v = getattr(groups[name], attr).detach().double().flatten()
        return v.quantile(0.5), v[resample[name]].quantile(0.5, dim=1)

    o_nn, g_nn = median(ORIGINAL, "nn_distance"), median(GENERATED, "nn_distance")
    o_iou, g_iou = median(ORIGINAL, "max_iou"), median(GENERATED, "max_iou")
    o_dm, g_dm = median(ORIGINAL, "distance_to_mean"), median(GENERATED, "distance_to_mean")
    o_ag, g_ag = median(ORIGINAL, "mean_model_agreement"), median(GENERATED, "mean_model_agreement")
    agrees = [groups[name].mean_model_agrees for name in (ORIGINAL, GENERATED)]
    if all(a is not None for a in agrees):  # resample the test examples too
        n_test = agrees[0].shape[1]
        draws = torch.randint(0, n_test, (num_resamples, n_test), generator=g)
        weights = torch.zeros(num_resamples, n_test, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(num_resamples, n_test, dtype=torch.float64)
        ) / n_test  # (B, N_test)

        def resampled_agreement(name: str, agree: torch.Tensor) -> torch.Tensor:
            per_model = weights @ agree.double().T  # (B, n): each model's agreement on each test resample
            return per_model.gather(1, resample[name]).quantile(0.5, dim=1)

        o_ag = (o_ag[0], resampled_agreement(ORIGINAL, agrees[0]))
        g_ag = (g_ag[0], resampled_agreement(GENERATED, agrees[1]))
    stats = {  # comparison -> (all models, resamples), each as in novelty_verdict
        "memorization_distance": [_ratio(g, o, 0.0) for g, o in zip(g_nn, o_nn)],
        "memorization_iou_gap": [_ratio(1 - g, 1 - o, float("inf")) for g, o in zip(g_iou, o_iou)],
        "collapse_distance": [_ratio(g, o, 0.0) for g, o in zip(g_dm, o_dm)],
        "collapse_disagreement": [_ratio(1 - g, 1 - o, float("inf")) for g, o in zip(g_ag, o_ag)],
    }
    if ref:
        noise = [median(name, "max_iou") for name in ref["names"]]
        stats["novelty_vs_noise"] = [
            g_iou[i] - sum(w * m[i] for w, m in zip(ref["weights"], noise)) for i in (0, 1)
        ]
    thresholds = summary["novelty"]["thresholds"]
    tail = (1.0 - confidence) / 2
    out = {}
    for key, (value, resampled) in stats.items():
        what, th_key, _ = COMPARISONS[key]
        threshold = 0.0 if th_key is None else float(thresholds[th_key])
        low = _json_number(resampled.quantile(tail, interpolation="lower"))
        high = _json_number(resampled.quantile(1.0 - tail, interpolation="higher"))
        low_f = float("inf") if low is None else low
        high_f = float("inf") if high is None else high
        out[key] = {
            "statistic": what,
            "value": _json_number(value),
            "low": low,
            "high": high,
            "threshold": threshold,
            "confidence": confidence,
            "resamples": num_resamples,
            "outcome": "below" if high_f < threshold else "above" if low_f >= threshold else "straddles",
        }
    return out
