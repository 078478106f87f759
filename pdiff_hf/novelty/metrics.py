"""Weight-space and function-space novelty metrics, and :func:`analyze_novelty`, which measures them for generated
models, the training checkpoints and the baselines alike (same network, same batched evaluation, same count).

Definitions (all recorded in the summary's ``novelty.definitions``):

* **distance**: RMS distance ``||z_a - z_b||_2 / sqrt(D')`` in normalized space (units of one standard deviation per
  entry; noise of std ``a`` moves a checkpoint by about ``a``). ``D'`` excludes entries that are constant over the
  training checkpoints.
* **nearest-neighbour distance** (``nn_distance``): distance to the nearest training checkpoint. For the training
  checkpoints themselves the nearest *other* checkpoint (leave-one-out), which is what a new, independent checkpoint
  of the same runs would be expected to show.
* **max-IoU** (``max_iou``): the test examples a model gets wrong form its error set; the IoU (intersection over
  union) of two error sets measures how alike two models fail. ``max_iou`` is its maximum over the training
  checkpoints (other than itself). Two models that make no error have IoU 1.
* **prediction agreement**: fraction of test examples on which two models predict the same class;
  ``max_agreement`` is its maximum over training checkpoints (other than itself), ``nn_agreement`` the agreement
  with the weight-space nearest checkpoint.
* **mean checkpoint**: the average of all training checkpoints in normalized space; ``distance_to_mean`` and
  ``mean_model_agreement`` (agreement with the model built from it) measure collapse onto the average.

Test accuracy is what is reported; anything that *selects* a model (``best_by_val``) uses validation accuracy.
All metrics are matrix operations (``torch.cdist``, error-set IoU as ``E_a @ E_b.T``, agreement as one matmul per
class); there is no Python loop over pairs of models. Nothing here changes process-wide state: the allocator tuning
of :mod:`pdiff_hf.novelty.allocator` is left to the program's entry point.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..evaluation.data import ClassificationSplits
from ..errors import CheckpointDatasetError, DimensionMismatchError, PDiffError
from ..evaluation.batched import accuracy_from_predictions, predict_with_parameters, summarize_accuracies
from ..layout import ParamLayout, check_finite
from .baselines import AVERAGE_K, NOISE_LEVELS, StatsNormalizer, make_baselines, resolve_normalizer
from .intervals import bootstrap_intervals
from .report import NoveltyReport
from .types import GroupMetrics
from .verdict import (
    DEFINITIONS,
    GENERATED,
    GOOD_MARGIN_PP,
    ORIGINAL,
    noise_reference,
    novelty_verdict,
    reference_noise,
    verdict_thresholds,
)


# ------------------------------------------------------------------------------------------------------- helpers
def _num(x: float, digits: int = 6) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise PDiffError(f"a novelty metric is not finite ({x}); check the inputs")
    return float(f"{x:.{digits}g}")


def _dist(values: torch.Tensor) -> Dict[str, float]:
    v = values.detach().double().flatten()
    return {
        "mean": _num(v.mean()),
        "median": _num(v.quantile(0.5)),
        "min": _num(v.min()),
        "max": _num(v.max()),
    }


def _iou(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    union = size_a[:, None] + size_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _pairwise_mean_iou(errors: torch.Tensor) -> Optional[float]:
    n = errors.shape[0]
    if n < 2:
        return None
    sizes = errors.sum(1)
    iou = _iou(errors @ errors.T, sizes, sizes).double()
    return _num((iou.sum() - iou.diagonal().sum()) / (n * (n - 1)))


def _as_params(params, layout: ParamLayout, what: str) -> torch.Tensor:
    params = torch.as_tensor(params).detach().to("cpu", torch.float32)
    if params.dim() == 1:
        params = params[None]
    if params.dim() != 2 or params.shape[1] != layout.dim:
        raise DimensionMismatchError(
            f"expected {what} of shape (N, {layout.dim}) for layout [{layout.describe()}], found {tuple(params.shape)}"
        )
    check_finite(params, what)
    return params


# ------------------------------------------------------------------------------------------------------ analysis
@torch.no_grad()
def analyze_novelty(
    model: nn.Module,
    layout: ParamLayout,
    train_params: torch.Tensor,
    generated_params: torch.Tensor,
    data: ClassificationSplits,
    normalizer=None,
    num_baseline: Optional[int] = None,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    average_k: Optional[int] = AVERAGE_K,
    gaussian: bool = True,
    seed: int = 0,
    train_val_accuracy: Optional[torch.Tensor] = None,
    batch_size: int = 10,
    models_per_chunk: int = 50,
    pca_gaussian: bool = False,
    resampled: bool = False,
) -> NoveltyReport:
    """Evaluate generated models, the training checkpoints and simple baselines alike, and measure novelty.

    Args:
        model: the target network (tensors outside ``layout`` are shared by every model).
        layout: the parameter layout of ``train_params`` and ``generated_params``.
        train_params: training checkpoints ``(T, D)``, ``T >= 2``.
        generated_params: generated models ``(N, D)``.
        data: splits; test accuracy and test predictions are the metrics, validation accuracy is used only to
            select (``best_by_val`` of the originals and generated models).
        normalizer: ``None`` (statistics of ``train_params``), a ``PDiffPipeline``, its ``ParameterAutoencoder``, or
            a :class:`~pdiff_hf.novelty.StatsNormalizer`; defines the normalized space of noise, averages and
            distances.
        num_baseline: models per baseline (default: as many as generated); 0 disables the baselines.
        noise_levels: noise stds in normalized space; ``average_k``: checkpoints per average (``None`` disables);
            ``gaussian``: include the per-dimension Gaussian; ``pca_gaussian`` / ``resampled``: include the
            full-covariance Gaussian in the checkpoints' PCA subspace and resampled training checkpoints (the perfect
            memorizer), drawn after the others (:func:`~pdiff_hf.novelty.make_baselines`).
        seed: seeds a ``torch.Generator`` for every baseline.
        train_val_accuracy: validation accuracies (%) of the training checkpoints, e.g. a checkpoint dataset's
            ``val_accuracy`` column; saves evaluating them again (they are only used for ``best_by_val``).
        batch_size / models_per_chunk: chunking of :func:`~pdiff_hf.evaluation.batched.predict_with_parameters`; the defaults
            (500 model-examples per vmapped call) measured fastest for MNIST1DCNN on CPU. On glibc, the first call in
            a process is about twice as fast after :func:`~pdiff_hf.novelty.tune_cpu_allocator`, which this function
            never calls (it changes the whole process).

    Raises:
        CheckpointDatasetError: fewer than 2 training checkpoints (nearest-neighbour statistics need two).
        DimensionMismatchError / LayoutMismatchError: parameters, normalizer or ``model`` do not fit ``layout``.
    """
    train = torch.as_tensor(train_params).detach()
    if train.dim() == 2 and train.shape[0] < 2:
        raise CheckpointDatasetError(
            f"expected at least 2 training checkpoints for novelty analysis (nearest-neighbour statistics compare "
            f"each checkpoint with the others), found {train.shape[0]}"
        )
    train = _as_params(train, layout, "training checkpoints")
    gen = _as_params(generated_params, layout, "generated parameters")
    if gen.shape[0] < 1:
        raise DimensionMismatchError("expected at least one generated model, found none")
    layout.check_module(model)
    norm = resolve_normalizer(normalizer, layout, train)
    n_train, n_gen = train.shape[0], gen.shape[0]
    num_baseline = n_gen if num_baseline is None else int(num_baseline)

    # 1. normalized space and baselines
    z_train = norm.normalize(train)
    z_gen = norm.normalize(gen)
    check_finite(z_train, "normalized training checkpoints")
    baselines = make_baselines(
        z_train, num_baseline, noise_levels, average_k, gaussian, torch.Generator().manual_seed(int(seed)),
        pca_gaussian=pca_gaussian, resampled=resampled,
    )
    z_mean = z_train.mean(0, keepdim=True)
    names = [ORIGINAL, GENERATED] + list(baselines)
    kinds = {ORIGINAL: "original", GENERATED: "generated", **{k: s["kind"] for k, (_, s) in baselines.items()}}
    settings = {k: s for k, (_, s) in baselines.items()}
    z_groups = {ORIGINAL: z_train, GENERATED: z_gen, **{k: z for k, (z, _) in baselines.items()}}
    raw_groups = {ORIGINAL: train, GENERATED: gen}
    for k, (z, _) in baselines.items():
        raw = norm.denormalize(z)
        check_finite(raw, f"baseline {k}")
        raw_groups[k] = raw
    bounds = [0]
    for k in names:
        bounds.append(bounds[-1] + raw_groups[k].shape[0])
    span = {k: (bounds[i], bounds[i + 1]) for i, k in enumerate(names)}

    # 2. predictions: every model (and the mean checkpoint, last) on the test split in one batched call
    mean_raw = norm.denormalize(z_mean)
    all_raw = torch.cat([raw_groups[k] for k in names] + [mean_raw])
    preds = predict_with_parameters(model, layout, all_raw, data.test_x, batch_size, models_per_chunk)
    mean_pred, preds = preds[-1], preds[:-1]
    test_acc = accuracy_from_predictions(preds, data.test_y)
    if train_val_accuracy is not None:
        train_val = torch.as_tensor(train_val_accuracy, dtype=torch.float32).flatten()
        if train_val.numel() != n_train:
            raise DimensionMismatchError(
                f"expected {n_train} validation accuracies of the training checkpoints, found {train_val.numel()}"
            )
        val_models = gen
    else:
        train_val, val_models = None, torch.cat([train, gen])
    val_acc = accuracy_from_predictions(
        predict_with_parameters(model, layout, val_models, data.val_x, batch_size, models_per_chunk), data.val_y
    )
    if train_val is None:
        train_val, val_acc = val_acc[:n_train], val_acc[n_train:]
    val_by_group = {ORIGINAL: train_val, GENERATED: val_acc}

    # 3. weight space: RMS distances in normalized space over non-constant entries
    varying = ~(train == train[0]).all(0)
    if not bool(varying.any()):
        raise CheckpointDatasetError(
            f"expected training checkpoints that differ, found {n_train} identical checkpoints; novelty is undefined"
        )
    d_eff = int(varying.sum())
    z_all = torch.cat([z_groups[k] for k in names])[:, varying].double()
    z_ref = z_train[:, varying].double()
    dist = torch.cdist(z_all, z_ref) / math.sqrt(d_eff)  # (M, T), M = every model of every group
    dist_to_mean = (z_all - z_mean[:, varying].double()).norm(dim=1) / math.sqrt(d_eff)  # (M,)

    # 4. function space: error-set IoU and prediction agreement with every training checkpoint
    labels = data.test_y.to(preds.device)
    errors = (preds != labels).float()  # (M, N_test)
    e_size = errors.sum(1)
    iou = _iou(errors @ errors[:n_train].T, e_size, e_size[:n_train])  # (M, T)
    num_classes = int(max(int(preds.max()), int(labels.max()), int(mean_pred.max()))) + 1
    agree = torch.zeros(preds.shape[0], n_train)  # (M, T)
    for c in range(num_classes):
        onehot = (preds == c).float()
        agree += onehot @ onehot[:n_train].T
    agree /= preds.shape[1]
    mean_agrees = preds == mean_pred[None]  # (M, N_test)
    mean_agree = mean_agrees.float().mean(1)  # (M,)

    # 5. nearest / most alike training checkpoint; a training checkpoint is not its own neighbour
    rows = torch.arange(n_train)
    dist[rows, rows] = float("inf")
    iou[rows, rows] = -1.0
    agree[rows, rows] = -1.0
    nn_dist, nn_idx = dist.min(1)
    max_iou, max_iou_idx = iou.max(1)
    max_agree = agree.max(1).values
    nn_agree = agree.gather(1, nn_idx[:, None])[:, 0]

    groups: Dict[str, GroupMetrics] = {}
    for k in names:
        a, b = span[k]
        groups[k] = GroupMetrics(
            name=k,
            kind=kinds[k],
            params=raw_groups[k],
            test_accuracy=test_acc[a:b],
            val_accuracy=val_by_group.get(k),
            nn_distance=nn_dist[a:b].float(),
            nn_index=nn_idx[a:b],
            max_iou=max_iou[a:b],
            max_iou_index=max_iou_idx[a:b],
            max_agreement=max_agree[a:b],
            nn_agreement=nn_agree[a:b],
            distance_to_mean=dist_to_mean[a:b].float(),
            mean_model_agreement=mean_agree[a:b],
            pairwise_mean_iou=_pairwise_mean_iou(errors[a:b]) if k != ORIGINAL else None,
            settings=settings.get(k, {}),
            mean_model_agrees=mean_agrees[a:b],
            test_predictions=preds[a:b],
        )
    # originals: the (T, T) block is already there
    orig_iou = iou[:n_train].double()
    groups[ORIGINAL].pairwise_mean_iou = _num(
        orig_iou.masked_fill(torch.eye(n_train, dtype=torch.bool), 0.0).sum() / (n_train * (n_train - 1))
    )

    # 6. summary and verdict
    mean_raw_acc = float(accuracy_from_predictions(mean_pred[None], labels)[0])
    summary = _summarize(groups, norm, layout.dim, d_eff, mean_raw_acc)
    summary["novelty"]["intervals"] = bootstrap_intervals(groups, summary, seed=seed)
    verdict = novelty_verdict(summary)
    summary["verdict"] = verdict
    return NoveltyReport(groups=groups, summary=summary, verdict=verdict)


# ------------------------------------------------------------------------------------------------------- summary
def _summarize(groups: Dict[str, GroupMetrics], norm: StatsNormalizer, dim: int, d_eff: int, mean_raw_acc: float) -> Dict:
    """The JSON summary: a flat accuracy + novelty entry per group (``original``, ``generated``, ``baselines``) and
    the details, thresholds and definitions under ``novelty``."""
    orig = groups[ORIGINAL]
    good_acc = float(orig.test_accuracy.double().mean()) - GOOD_MARGIN_PP
    novel_iou = float(orig.pairwise_mean_iou)
    thresholds = verdict_thresholds(good_test_accuracy=_num(good_acc), novel_max_iou=_num(novel_iou))

    def entry(g: GroupMetrics) -> Tuple[Dict, Dict]:
        good = g.test_accuracy.double() >= good_acc - 1e-9
        novel = g.max_iou.double() < novel_iou
        flat = dict(summarize_accuracies(g.test_accuracy))
        if g.val_accuracy is not None:
            flat["best_by_val"] = round(float(g.test_accuracy[int(g.val_accuracy.argmax())]), 4)
        flat.update(g.settings)
        flat["kind"] = g.kind
        flat.update(
            {
                "nn_distance_median": _num(g.nn_distance.double().median()),
                "max_iou_median": _num(g.max_iou.double().median()),
                "max_iou_mean": _num(g.max_iou.double().mean()),
                "max_agreement_mean": _num(g.max_agreement.double().mean()),
                "distance_to_mean_median": _num(g.distance_to_mean.double().median()),
                "good_fraction": _num(good.double().mean()),
                "novel_fraction": _num(novel.double().mean()),
                "good_and_novel_fraction": _num((good & novel).double().mean()),
            }
        )
        detail = {
            "count": g.count,
            "nn_distance": _dist(g.nn_distance),
            "max_iou": _dist(g.max_iou),
            "max_agreement": _dist(g.max_agreement),
            "nn_agreement": _dist(g.nn_agreement),
            "distance_to_mean": _dist(g.distance_to_mean),
            "mean_model_agreement": _dist(g.mean_model_agreement),
            "pairwise_mean_iou": g.pairwise_mean_iou,
            "good_fraction": flat["good_fraction"],
            "novel_fraction": flat["novel_fraction"],
            "good_and_novel_fraction": flat["good_and_novel_fraction"],
        }
        return flat, detail

    flats, details = {}, {}
    for name, g in groups.items():
        flats[name], details[name] = entry(g)
    novelty = {
        "original_pairwise_mean_iou": groups[ORIGINAL].pairwise_mean_iou,
        "generated_pairwise_mean_iou": groups[GENERATED].pairwise_mean_iou,
        "mean_checkpoint_test_accuracy": _num(mean_raw_acc),
        "num_training_checkpoints": groups[ORIGINAL].count,
        "dims": dim,
        "distance_dims": d_eff,
        "normalization": norm.source,
        "thresholds": thresholds,
        "definitions": dict(DEFINITIONS),
        "groups": details,
    }
    summary = {
        ORIGINAL: flats[ORIGINAL],
        GENERATED: flats[GENERATED],
        "baselines": {k: v for k, v in flats.items() if k not in (ORIGINAL, GENERATED)},
        "novelty": novelty,
    }
    novelty["reference_noise"] = reference_noise(summary)
    novelty["reference_noise_interpolation"] = noise_reference(summary)
    return summary
