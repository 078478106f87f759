"""Held-out generalization test: do the generated models look like *new checkpoints of the same collection*?

The novelty verdict (:mod:`.verdict`) compares generated models with the training checkpoints themselves. A generator
that samples the true distribution of a collection should look like checkpoints of the same collection that it never
saw: not closer to the training checkpoints than those are, not less diverse or closer to their mean, not elsewhere.

1. :func:`heldout_split` holds out every k-th checkpoint of each run, so training and held-out checkpoints are
   exchangeable (the last checkpoints of a run are not: they come later in training). Fit on the training ones only.
2. :func:`generalization_test` measures four groups alike: ``generated``, ``heldout``, ``training`` (a random subsample
   of the training checkpoints, as many as generated models, at most all) and each baseline, and compares each with
   the held-out checkpoints (ratios with bootstrap intervals, an energy distance with a permutation null).
3. The verdict (:func:`generalization_verdict`, a function of the JSON summary alone):

   * **MEMORIZING**: closer to the training checkpoints than held-out checkpoints are (``nn_distance`` ratio, or the
     error-overlap gap ``1 - max_iou``, decidedly below the band). These two are one-sided (band ``[1/1.5, inf)``):
     when the collection is one SGD trajectory, a held-out checkpoint sits one step from a training one, so a
     generator that does not copy is farther than that, which says nothing against it;
   * **AVERAGING**: less diverse, closer to the mean checkpoint, agreeing more with the mean-checkpoint model, or with
     a narrower accuracy spread than held-out checkpoints (one of those ratios decidedly below the band);
   * **OFF-DISTRIBUTION**: the energy distance to the held-out checkpoints above the null's 95th percentile (or a
     ratio decidedly above the band, or the accuracy median decidedly outside ±1 pp of theirs);
   * **GENERALIZING**: the energy distance within the null and every interval inside its band (an accuracy spread or
     median whose interval straddles its band is reported, not decisive: 5-20 held-out accuracies rarely pin it);
   * **INCONCLUSIVE**: some interval straddles an edge of its band (named in the summary).

   "Decidedly below" means the whole 95% interval is below the band; a ratio band is ``[1/1.5, 1.5]``
   (:data:`RATIO_BAND`), the accuracy band ``±1`` pp (:data:`ACCURACY_BAND_PP`).

**One name, one normalization per distance** (also in every summary's ``definitions``):

* ``rms_distance``: ``||z_a - z_b||_2 / sqrt(D')`` in normalized units ``z`` (the pipeline's per-entry standardization
  when a normalizer is given, else the training checkpoints' per-entry mean and standard deviation); ``D'`` counts the
  entries that are not constant over the training checkpoints. ``nn_distance``, ``distance_to_mean`` and
  ``diversity`` are rms_distances.
* ``energy_distance``: the energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (within-sample terms over distinct
  pairs) between a group and the held-out checkpoints, with ``|.|`` the Euclidean distance between PCA coordinates
  ``V_k^T (z - mean) / sqrt(D')`` (the top ``k`` principal directions of the normalized training checkpoints,
  ``k = min(64, rank)``): an rms_distance restricted to the training checkpoints' PCA subspace.

Everything is a matrix operation on CPU tensors in float64 (``torch.cdist`` per group, error-set IoU as a matmul,
resamples as index tensors); every draw comes from one ``torch.Generator`` seeded with ``seed``, so a result is the
same for a seed whatever the number of torch threads.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import GeneralizationTestError
from .baselines import principal_components
from .generalization_stats import (
    _num,
    _ratio,
    _matrix,
    _iou,
    _interval,
    _outcome,
    _normalize_fn,
    _check_predictions,
    _check_runs,
    _energy_comparisons,
    _null_kind,
)
from .generalization_report import (  # noqa: F401  (re-exported: the test's vocabulary and result)
    ACCURACY_BAND_PP,
    ACCURACY_SPREAD,
    AVERAGING,
    COMPARISONS,
    CONFIDENCE,
    DEFINITIONS,
    GENERALIZING,
    GENERATED,
    GeneralizationResult,
    HELDOUT,
    HELDOUT_EVERY,
    INCONCLUSIVE,
    MEMORIZING,
    MIN_HELDOUT,
    MIN_TRAINING,
    NULL_QUANTILE,
    NUM_BOOTSTRAP,
    NUM_PERMUTATIONS,
    OFF_DISTRIBUTION,
    PCA_COMPONENTS,
    RATIO_BAND,
    TRAINING,
    VERDICTS,
    VERDICT_RULES,
    _VERDICT_ORDER,
    _fmt,
    _label,
    best_baseline,
    describe_comparison,
    format_generalization_table,
    generalization_markdown,
    generalization_verdict,
    summary_lines,
    summary_markdown,
)

# --------------------------------------------------------------------------------------------------------- split
def heldout_split(
    num_checkpoints: int,
    every: Union[int, float, Fraction] = HELDOUT_EVERY,
    run_ids: Optional[Sequence] = None,
    steps: Optional[Sequence[int]] = None,
    min_training: int = MIN_TRAINING,
    min_heldout: int = MIN_HELDOUT,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exchangeable training / held-out split of a checkpoint collection: within each run, the checkpoints at positions
    ``every - 1, 2 * every - 1, ...`` (every ``every``-th, counted from the run's first) are held out.

    Args:
        num_checkpoints: ``N``, rows of the collection.
        every: hold out one checkpoint in ``every`` (> 1). A fraction spreads a count evenly: ``Fraction(220, 20)``
            holds out every 11th, ``Fraction(8, 5)`` 5 of every 8 consecutive checkpoints (position ``p`` is held out
            when ``floor((p + 1) / every) > floor(p / every)``; a float is read as the nearest fraction with a
            denominator up to 10^6).
        run_ids: ``N`` run ids (e.g. a checkpoint dataset's ``run_id`` column); ``None``: one run.
        steps: ``N`` training steps that order the checkpoints within a run; ``None``: the row order.
        min_training / min_heldout: the fewest checkpoints the test accepts (10 and 5).

    Returns:
        ``(train_index, heldout_index)``: ascending int64 row indices, together ``0 .. N-1``; each run holds out
        ``floor(run length / every)`` checkpoints.

    Raises:
        GeneralizationTestError: ``every <= 1``, ``run_ids`` / ``steps`` of another length than ``N``, or fewer than
            ``min_training`` training or ``min_heldout`` held-out checkpoints (before any work).
    """
    n = int(num_checkpoints)
    k = Fraction(every).limit_denominator(10**6) if isinstance(every, (int, float, Fraction)) else None
    if n < 0 or k is None or not k > 1:
        raise GeneralizationTestError(
            f"expected num_checkpoints >= 0 and every > 1, found num_checkpoints={num_checkpoints}, every={every}"
        )
    for name, values in (("run_ids", run_ids), ("steps", steps)):
        if values is not None and len(values) != n:
            raise GeneralizationTestError(f"expected {n} {name} (one per checkpoint), found {len(values)}")
    runs = list(run_ids) if run_ids is not None else [0] * n
    order = list(steps) if steps is not None else list(range(n))
    held_count = sum(math.floor(c / k) for c in Counter(runs).values())
    if n - held_count < min_training or held_count < min_heldout:
        raise GeneralizationTestError(
            f"expected at least {min_training} training and {min_heldout} held-out checkpoints (one in every {k} of "
            f"each run held out), found {n - held_count} training and {held_count} held-out in {n} checkpoints"
        )
    position: Dict = {}
    held = torch.zeros(n, dtype=torch.bool)
    for i in sorted(range(n), key=lambda i: (str(runs[i]), order[i], i)):
        p = position[runs[i]] = position.get(runs[i], -1) + 1
        held[i] = math.floor((p + 1) / k) > math.floor(p / k)
    return (~held).nonzero().flatten(), held.nonzero().flatten()


# ------------------------------------------------------------------------------------------------------ the test
@torch.no_grad()
def generalization_test(
    train: torch.Tensor,
    heldout: torch.Tensor,
    generated: torch.Tensor,
    baselines: Optional[Mapping[str, torch.Tensor]] = None,
    *,
    predictions: Optional[Mapping[str, torch.Tensor]] = None,
    labels: Optional[torch.Tensor] = None,
    mean_prediction: Optional[torch.Tensor] = None,
    normalizer=None,
    seed: int = 0,
    num_bootstrap: int = NUM_BOOTSTRAP,
    num_permutations: int = NUM_PERMUTATIONS,
    pca_components: int = PCA_COMPONENTS,
    confidence: float = CONFIDENCE,
    train_runs: Optional[torch.Tensor] = None,
    heldout_runs: Optional[torch.Tensor] = None,
) -> GeneralizationResult:
    """Compare generated models (and baselines) with held-out checkpoints of the same collection.

    Args:
        train: ``(T, D)`` the checkpoints the generator was fitted on, ``T >= 10``.
        heldout: ``(H, D)`` checkpoints of the same collection it never saw (:func:`heldout_split`), ``H >= 5``.
        generated: ``(G, D)`` generated parameter vectors, ``G >= 2``.
        baselines: ``{name: (n, D)}`` parameter vectors of baselines (e.g. ``pca_gaussian``, ``resampled``,
            ``average_k16``), ``n >= 2``; measured exactly like the generated models.
        predictions: function space (optional): ``{group: (n, N_test)}`` test predictions with keys ``training``
            (all ``T`` training checkpoints, in the order of ``train``), ``heldout``, ``generated`` and, optionally,
            each baseline; needs ``labels`` ``(N_test,)`` and ``mean_prediction`` ``(N_test,)``, the predictions of
            the model built from the mean training checkpoint in normalized units.
        normalizer: an object with ``normalize(params) -> z`` (a ``StatsNormalizer``, a ``ParameterAutoencoder``);
            ``None``: the training checkpoints' per-entry mean and standard deviation.
        seed: seeds the one ``torch.Generator`` of the training subsample, the bootstrap and the permutations.
        num_bootstrap / num_permutations: resamples of the intervals and of the energy-distance null (>= 100 each;
            the 95% quantiles need them).
        pca_components: PCA coordinates of the energy distance (capped at the rank of the training checkpoints).
        confidence: of the bootstrap intervals.
        train_runs / heldout_runs: ``(T,)`` and ``(H,)`` run ids, given together when whole runs are held out (the
            held-out runs disjoint from the training ones, e.g. independent runs aligned by permutation): the
            energy-distance null then holds out whole runs too (as many as ``heldout_runs`` names), since checkpoints
            of one run are near copies and a null of single checkpoints would reject even new runs of the recipe.
            ``None`` (default): held-out checkpoints exchangeable with the training ones (:func:`heldout_split`).

    Returns:
        :class:`GeneralizationResult` (``to_dict()`` for ``results.json``).

    Raises:
        GeneralizationTestError: fewer than 10 training, 5 held-out or 2 generated / baseline models, predictions
            without labels or the mean prediction, resample counts below 100, a baseline named like a group, run ids
            not given together, of other lengths than their checkpoints, shared by training and held-out, or
            naming no more training runs than held-out ones.
        DimensionMismatchError: vectors or predictions of other shapes than the groups they belong to.
        NonFiniteParametersError: NaN or Inf in any vectors.
    """
    # 0. checks, before any work
    train = _matrix(train, "training checkpoints", min_rows=MIN_TRAINING)
    d = train.shape[1]
    heldout = _matrix(heldout, "held-out checkpoints", d, min_rows=MIN_HELDOUT)
    vectors = {GENERATED: _matrix(generated, "generated models", d, min_rows=2)}
    for name, x in (baselines or {}).items():
        if name in (GENERATED, HELDOUT, TRAINING) or name.startswith("training"):
            raise GeneralizationTestError(f"expected baseline names other than the groups', found {name!r}")
        vectors[str(name)] = _matrix(x, f"baseline {name}", d, min_rows=2)
    if int(num_bootstrap) < 100 or int(num_permutations) < 100 or not 0.5 <= confidence < 1:
        raise GeneralizationTestError(
            f"expected num_bootstrap >= 100, num_permutations >= 100 and 0.5 <= confidence < 1, found "
            f"{num_bootstrap}, {num_permutations}, {confidence}"
        )
    if int(pca_components) < 1:
        raise GeneralizationTestError(f"expected pca_components >= 1, found {pca_components}")
    preds = _check_predictions(predictions, labels, mean_prediction, train.shape[0], heldout.shape[0], vectors)
    t, h = train.shape[0], heldout.shape[0]
    pool_runs, k_runs = _check_runs(train_runs, heldout_runs, t, h)
    g = torch.Generator().manual_seed(int(seed))

    # 1. normalized units, varying entries, the training subsample
    norm = _normalize_fn(normalizer, train)
    z_train = norm(train)
    varying = ~(train == train[0]).all(0)
    if not bool(varying.any()):
        raise GeneralizationTestError(f"expected training checkpoints that differ, found {t} identical ones")
    d_eff = int(varying.sum())
    scale = 1.0 / math.sqrt(d_eff)
    z_train = z_train[:, varying].double()
    sub = torch.randperm(t, generator=g)[: min(vectors[GENERATED].shape[0], t)].sort().values
    groups_z = {HELDOUT: norm(heldout)[:, varying].double(), TRAINING: z_train[sub]}
    groups_z.update({k: norm(v)[:, varying].double() for k, v in vectors.items()})
    order = [GENERATED, HELDOUT, TRAINING] + [k for k in vectors if k != GENERATED]
    z_mean = z_train.mean(0)
    mean_pc, basis, _ = principal_components(z_train, pca_components)

    # 2. weight space, per group: (n,) nearest / mean distances, (n, n) pairwise, PCA coordinates
    per_model: Dict[str, Dict[str, torch.Tensor]] = {}
    pairwise: Dict[str, torch.Tensor] = {}
    coords: Dict[str, torch.Tensor] = {}
    for name in order:
        z = groups_z[name]
        dist = torch.cdist(z, z_train) * scale  # (n, T)
        if name == TRAINING:
            dist[torch.arange(len(sub)), sub] = float("inf")  # a training checkpoint is not its own neighbour
        per_model[name] = {
            "nn_distance": dist.min(1).values,
            "distance_to_mean": (z - z_mean).norm(dim=1) * scale,
        }
        pairwise[name] = torch.cdist(z, z) * scale
        pairwise[name].fill_diagonal_(0.0)
        coords[name] = (z - mean_pc) @ basis.T * scale  # (n, k)
    coords["training_all"] = (z_train - mean_pc) @ basis.T * scale

    # 3. function space: error-set IoU with the training checkpoints, agreement with the mean-checkpoint model
    accuracy: Dict[str, torch.Tensor] = {}
    if preds is not None:
        lab = preds["labels"]
        train_err = (preds[TRAINING] != lab).double()  # (T, N)
        pred_by_group = {HELDOUT: preds[HELDOUT], TRAINING: preds[TRAINING][sub]}
        pred_by_group.update({k: preds[k] for k in vectors if k in preds})
        for name, p in pred_by_group.items():
            err = (p != lab).double()
            iou = _iou(err, train_err)
            if name == TRAINING:
                iou[torch.arange(len(sub)), sub] = -1.0
            per_model[name]["max_iou"] = iou.max(1).values
            per_model[name]["mean_model_agreement"] = (p == preds["mean"]).double().mean(1)
            accuracy[name] = (p == lab).double().mean(1) * 100.0
        accuracy["training_all"] = (preds[TRAINING] == lab).double().mean(1) * 100.0

    # 4. bootstrap of every comparison with the held-out checkpoints (one held-out resample for all groups)
    b = int(num_bootstrap)
    held_idx = torch.randint(0, h, (b, h), generator=g)
    resample = {name: torch.randint(0, len(groups_z[name]), (b, len(groups_z[name])), generator=g) for name in order}

    def stats(name: str, idx: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Group statistics on all models (``idx=None``: shape ``()``) or on resamples (``idx`` (B, n): ``(B,)``)."""
        pm = per_model[name]
        n = len(groups_z[name])
        w = (torch.ones(1, n, dtype=torch.float64) if idx is None else
             torch.zeros(len(idx), n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64)))
        m = w.sum(1)

        def mean(v):
            return (w @ v) / m

        pairs = m**2 - (w**2).sum(1)
        div = ((w @ pairwise[name]) * w).sum(1) / pairs.clamp_min(1)
        out = {
            "nn_distance": mean(pm["nn_distance"]),
            "distance_to_mean": mean(pm["distance_to_mean"]),
            "diversity": torch.where(pairs > 0, div, torch.zeros_like(div)),
        }
        if "max_iou" in pm:
            out["error_overlap_gap"] = 1.0 - mean(pm["max_iou"])
            out["mean_model_disagreement"] = 1.0 - mean(pm["mean_model_agreement"])
            acc = accuracy[name][None] if idx is None else accuracy[name][idx]
            out["accuracy_std"] = acc.std(1)
            out["accuracy_median"] = acc.quantile(0.5, dim=1)
        return {k: v.squeeze(0) if idx is None else v for k, v in out.items()}

    held_all, held_res = stats(HELDOUT, None), stats(HELDOUT, held_idx)
    comparisons: Dict[str, Dict[str, Dict]] = {}
    for name in order:
        if name == HELDOUT:
            continue
        grp_all, grp_res = stats(name, None), stats(name, resample[name])
        entries = {}
        for key, (what, kind, _, above) in COMPARISONS.items():
            if kind == "energy" or key not in grp_all or key not in held_all:
                continue
            if kind == "ratio":
                value, res = _ratio(grp_all[key], held_all[key]), _ratio(grp_res[key], held_res[key])
                band = (1.0 / RATIO_BAND, RATIO_BAND if above is not None else math.inf)
            else:
                value, res = grp_all[key] - held_all[key], grp_res[key] - held_res[key]
                band = (-ACCURACY_BAND_PP, ACCURACY_BAND_PP)
            low, high = _interval(res, confidence)
            entries[key] = {
                "statistic": what,
                "value": _num(value),
                "low": _num(low),
                "high": _num(high),
                "band": [_num(band[0]), _num(band[1])],
                "outcome": _outcome(low, high, band),
            }
        comparisons[name] = entries

    # 5. energy distance to the held-out checkpoints, with a permutation null from the pooled held-out + training
    sizes = {name: min(len(groups_z[name]), t) for name in order if name != HELDOUT}
    energy, nulls = _energy_comparisons(coords, sizes, h, pool_runs, k_runs, int(num_permutations), g)
    for name, entry in energy.items():
        comparisons[name]["energy_distance"] = entry

    # 6. per-group JSON entries, verdicts, the summary lines
    groups: Dict[str, Dict] = {}
    for name in order:
        pm, st = per_model[name], (held_all if name == HELDOUT else stats(name, None))
        entry = {
            "count": len(groups_z[name]),
            "nn_distance": _num(st["nn_distance"]),
            "distance_to_mean": _num(st["distance_to_mean"]),
            "diversity": _num(st["diversity"]),
            "energy_distance": None if name == HELDOUT else comparisons[name]["energy_distance"]["value"],
        }
        if "max_iou" in pm:
            entry.update(
                max_iou=_num(pm["max_iou"].mean()),
                mean_model_agreement=_num(pm["mean_model_agreement"].mean()),
                test_accuracy_median=_num(st["accuracy_median"]),
                test_accuracy_std=_num(st["accuracy_std"]),
            )
        if name != HELDOUT:
            entry["verdict"], entry["decided_by"] = generalization_verdict(comparisons[name])
        groups[name] = entry
    settings = {
        "num_training": t,
        "num_heldout": h,
        "num_generated": len(groups_z[GENERATED]),
        "training_subsample": len(sub),
        "dims": d,
        "distance_dims": d_eff,
        "pca_components": int(basis.shape[0]),
        "normalization": getattr(normalizer, "source", None) or (
            "training checkpoint statistics" if normalizer is None else type(normalizer).__name__
        ),
        "function_space": preds is not None,
        "seed": int(seed),
        "bootstrap_resamples": b,
        "permutations": int(num_permutations),
        "confidence": confidence,
        "ratio_band": [_num(1.0 / RATIO_BAND), RATIO_BAND],
        "accuracy_band_pp": ACCURACY_BAND_PP,
        "null_quantile": NULL_QUANTILE,
        "null_holds_out": _null_kind(pool_runs),
        "baselines": [k for k in vectors if k != GENERATED],
    }
    data = {"groups": groups, "comparisons": comparisons, "settings": settings}
    verdict, decided_by = groups[GENERATED]["verdict"], groups[GENERATED]["decided_by"]
    pca_points = {k: v[:, :2].float() for k, v in coords.items()}
    return GeneralizationResult(
        verdict=verdict,
        decided_by=decided_by,
        summary=summary_lines({**data, "verdict": verdict, "decided_by": decided_by}),
        groups=groups,
        comparisons=comparisons,
        settings=settings,
        pca_points=pca_points,
        energy_null={k: v.float() for k, v in nulls.items()},
        test_accuracy={k: v.float() for k, v in accuracy.items()},
    )


def __getattr__(name: str):
    """``evaluate_generalization`` and ``generalization_from_report`` live in :mod:`.generalization_network` (which
    imports this module); importing them from here still works."""
    if name in ("evaluate_generalization", "generalization_from_report"):
        from . import generalization_network

        return getattr(generalization_network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
