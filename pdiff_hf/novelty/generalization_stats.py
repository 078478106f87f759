"""The statistics behind the held-out generalization test (:mod:`.generalization`): checked matrices, ratios,
error-set IoU, the energy distance and its permutation null, bootstrap intervals and their outcome against a band,
the normalized units and the checked predictions of every group. Plain float64 tensor functions."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..errors import DimensionMismatchError, GeneralizationTestError
from ..layout import check_finite
from .generalization_report import COMPARISONS, GENERATED, HELDOUT, NULL_QUANTILE, TRAINING

def _num(x) -> Optional[float]:
    """A finite value to 6 significant digits; ``None`` (JSON ``null``) for an infinite or undefined one."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b``; a zero denominator gives ``inf`` (``1`` when ``a`` is zero too: both groups alike)."""
    safe = torch.where(b > 0, b, torch.ones_like(b))
    return torch.where(b > 0, a / safe, torch.where(a > 0, torch.full_like(a, float("inf")), torch.ones_like(a)))


def _matrix(x, what: str, dim: Optional[int] = None, min_rows: int = 1) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise DimensionMismatchError(f"expected {what} of shape {want}, found {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise GeneralizationTestError(f"expected at least {min_rows} {what}, found {x.shape[0]}")
    check_finite(x, what)
    return x


def _iou(errors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(n, T)`` IoU of the error sets ``(n, N)`` with the reference error sets ``(T, N)``; 1 for two empty sets."""
    inter = errors @ reference.T
    union = errors.sum(1)[:, None] + reference.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _energy(d_xy: torch.Tensor, d_xx: torch.Tensor, d_yy: torch.Tensor) -> torch.Tensor:
    """Energy distance from ``(..., n, m)``, ``(..., n, n)`` and ``(..., m, m)`` distance matrices (zero diagonals):
    ``2 mean(d_xy) - mean over distinct pairs of d_xx and of d_yy``."""
    n, m = d_xx.shape[-1], d_yy.shape[-1]
    return 2 * d_xy.mean((-2, -1)) - d_xx.sum((-2, -1)) / (n * (n - 1)) - d_yy.sum((-2, -1)) / (m * (m - 1))


def _interval(resampled: torch.Tensor, confidence: float) -> Tuple[float, float]:
    tail = (1.0 - confidence) / 2
    low = resampled.quantile(tail, interpolation="lower")
    high = resampled.quantile(1.0 - tail, interpolation="higher")
    return float(low), float(high)


def _outcome(low: float, high: float, band: Tuple[float, float]) -> str:
    """``below`` / ``above`` when the whole interval is outside the band, ``within`` when inside, else ``straddles``."""
    if high < band[0]:
        return "below"
    if low > band[1]:
        return "above"
    if low >= band[0] and high <= band[1]:
        return "within"
    return "straddles"


def _normalize_fn(normalizer, train: torch.Tensor):
    if normalizer is None:
        mean, std = train.mean(0), train.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return lambda x: (x - mean) / std
    if not callable(getattr(normalizer, "normalize", None)):
        raise GeneralizationTestError(
            f"expected normalizer to be None or to have normalize(params), found {type(normalizer).__name__}"
        )

    def norm(x: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(normalizer.normalize(x)).detach().to("cpu", torch.float32)
        if z.shape != x.shape:
            raise DimensionMismatchError(f"expected the normalizer to keep shape {tuple(x.shape)}, found {tuple(z.shape)}")
        check_finite(z, "normalized parameters")
        return z

    return norm


def _check_predictions(predictions, labels, mean_prediction, t: int, h: int, vectors: Mapping) -> Optional[Dict]:
    if predictions is None:
        return None
    if labels is None or mean_prediction is None:
        raise GeneralizationTestError(
            "expected labels and mean_prediction with predictions (function space), found "
            f"labels={'given' if labels is not None else None}, "
            f"mean_prediction={'given' if mean_prediction is not None else None}"
        )
    labels = torch.as_tensor(labels).detach().cpu().flatten()
    mean = torch.as_tensor(mean_prediction).detach().cpu().flatten()
    if mean.shape != labels.shape:
        raise DimensionMismatchError(f"expected mean_prediction of shape {tuple(labels.shape)}, found {tuple(mean.shape)}")
    counts = {TRAINING: t, HELDOUT: h, **{k: v.shape[0] for k, v in vectors.items()}}
    missing = [k for k in (TRAINING, HELDOUT, GENERATED) if k not in predictions]
    unknown = [k for k in predictions if k not in counts]
    if missing or unknown:
        raise GeneralizationTestError(
            f"expected predictions for {TRAINING!r}, {HELDOUT!r}, {GENERATED!r} and optionally the baselines, found "
            f"missing {missing} and unknown {unknown}"
        )
    out = {"labels": labels, "mean": mean}
    for k, p in predictions.items():
        p = torch.as_tensor(p).detach().cpu()
        if p.shape != (counts[k], labels.numel()):
            raise DimensionMismatchError(
                f"expected predictions[{k!r}] of shape ({counts[k]}, {labels.numel()}), found {tuple(p.shape)}"
            )
        out[k] = p
    return out


def _energy_null_by_run(
    d_pool: torch.Tensor, pool_runs: torch.Tensor, n: int, k: int, num: int, g: torch.Generator
) -> torch.Tensor:
    """``(num,)`` energy distances for a collection held out by whole runs: each draw takes every checkpoint of ``k``
    random runs of the pool as pseudo-held-out and ``n`` random checkpoints of the other runs (at most all) as the
    pseudo-group. Checkpoints of one run are near copies, so drawing single checkpoints (:func:`_energy_null`) would
    put even new runs of the same recipe far outside the null."""
    runs = pool_runs.unique()
    out = []
    for _ in range(num):
        held = torch.isin(pool_runs, runs[torch.randperm(len(runs), generator=g)[:k]])
        y = held.nonzero().flatten()
        rest = (~held).nonzero().flatten()
        x = rest[torch.randperm(len(rest), generator=g)[:n]]
        out.append(_energy(d_pool[x][:, y], d_pool[x][:, x], d_pool[y][:, y]))
    return torch.stack(out)


def _energy_null(d_pool: torch.Tensor, n: int, h: int, num: int, g: torch.Generator, chunk: int = 100) -> torch.Tensor:
    """``(num,)`` energy distances between disjoint random subsets of ``n`` and ``h`` points of the pool (its
    ``(P, P)`` distance matrix): a pseudo-group and pseudo-held-out checkpoints drawn from the same collection."""
    p = d_pool.shape[0]
    perm = torch.rand(num, p, generator=g).argsort(1)
    out = []
    for start in range(0, num, chunk):
        y, x = perm[start : start + chunk, :h], perm[start : start + chunk, h : h + n]
        d_xy = d_pool[x[:, :, None], y[:, None, :]]
        d_xx = d_pool[x[:, :, None], x[:, None, :]]
        d_yy = d_pool[y[:, :, None], y[:, None, :]]
        out.append(_energy(d_xy, d_xx, d_yy))
    return torch.cat(out)


def _check_runs(train_runs, heldout_runs, t: int, h: int) -> Tuple[Optional[torch.Tensor], int]:
    """``(pool run ids (T + H,), training rows first; number of held-out runs)``, or ``(None, 0)`` without run ids;
    GeneralizationTestError on run ids that do not describe whole held-out runs."""
    if train_runs is None and heldout_runs is None:
        return None, 0
    if train_runs is None or heldout_runs is None:
        raise GeneralizationTestError("expected train_runs and heldout_runs together (whole runs held out), found one")
    runs = []
    for name, ids, n in (("train_runs", train_runs, t), ("heldout_runs", heldout_runs, h)):
        ids = torch.as_tensor(ids).detach().cpu()
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.shape != (n,):
            raise GeneralizationTestError(
                f"expected {name} to be ({n},) integer run ids, found {tuple(ids.shape)} {ids.dtype}"
            )
        runs.append(ids.long())
    shared = sorted(set(runs[0].tolist()) & set(runs[1].tolist()))
    if shared:
        raise GeneralizationTestError(f"expected held-out runs that are not training runs, found shared runs {shared[:5]}")
    k, available = runs[1].unique().numel(), runs[0].unique().numel()
    if available <= k:
        raise GeneralizationTestError(
            f"expected more training runs than held-out runs for the whole-run null, found {available} and {k}"
        )
    return torch.cat(runs), int(k)


def _null_kind(pool_runs: Optional[torch.Tensor]) -> str:
    return "checkpoints" if pool_runs is None else "whole runs"


def _energy_comparisons(coords, sizes, h: int, pool_runs, k_runs: int, num: int, g: torch.Generator):
    """Step 5 of the test: ``({group: energy_distance entry}, {group size: (num,) null})``. ``coords``: PCA
    coordinates per group (``"training_all"`` included); ``sizes``: each compared group's size, capped at the number of
    training checkpoints (the null's pseudo-group size); ``pool_runs``: run ids of the pool (whole runs held out) or
    ``None``."""
    pool = torch.cat([coords["training_all"], coords[HELDOUT]])
    d_pool = torch.cdist(pool, pool)
    d_pool.fill_diagonal_(0.0)
    d_hh = torch.cdist(coords[HELDOUT], coords[HELDOUT])
    d_hh.fill_diagonal_(0.0)
    nulls: Dict[int, torch.Tensor] = {}
    for size in sorted(set(sizes.values())):
        if pool_runs is None:
            nulls[size] = _energy_null(d_pool, size, h, num, g)
        else:
            nulls[size] = _energy_null_by_run(d_pool, pool_runs, size, k_runs, num, g)
    entries = {}
    for name, size in sizes.items():
        c = coords[name]
        d_gg = torch.cdist(c, c)
        d_gg.fill_diagonal_(0.0)
        value = float(_energy(torch.cdist(c, coords[HELDOUT]), d_gg, d_hh))
        null = nulls[size]
        threshold = float(null.quantile(NULL_QUANTILE))
        entries[name] = {
            "statistic": COMPARISONS["energy_distance"][0],
            "value": _num(value),
            "threshold": _num(threshold),
            "null_median": _num(null.median()),
            "p_value": _num((1 + int((null >= value).sum())) / (1 + len(null))),
            "null_size": size,
            "permutations": len(null),
            "null_holds_out": _null_kind(pool_runs),
            "outcome": "above" if value > threshold else "within",
        }
    return entries, nulls
