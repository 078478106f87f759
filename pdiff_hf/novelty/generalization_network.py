"""The held-out generalization test on a network: test predictions of every group (computed in one batched call
with the mean-checkpoint model, or taken from a novelty report) before :func:`~pdiff_hf.novelty.generalization.
generalization_test` compares them. Used by the demo and ``pdiff-hf evaluate``."""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from .generalization import generalization_test
from .generalization_stats import _matrix
from .generalization_report import GENERATED, HELDOUT, MIN_HELDOUT, MIN_TRAINING, TRAINING, GeneralizationResult


@torch.no_grad()
def evaluate_generalization(
    model,
    layout,
    train_params: torch.Tensor,
    heldout_params: torch.Tensor,
    generated_params: torch.Tensor,
    data,
    normalizer=None,
    baselines: Optional[Mapping[str, torch.Tensor]] = None,
    predictions: Optional[Mapping[str, torch.Tensor]] = None,
    seed: int = 0,
    batch_size: int = 10,
    models_per_chunk: int = 50,
    **test_kwargs,
) -> GeneralizationResult:
    """:func:`generalization_test` on a network: weight space and function space (test predictions).

    Args:
        model / layout: the target network and the parameter layout of every vector.
        train_params / heldout_params / generated_params: ``(T, D)``, ``(H, D)``, ``(G, D)`` (see
            :func:`generalization_test`).
        data: ``ClassificationSplits``; the test split is scored.
        normalizer: ``None`` (statistics of ``train_params``), a ``PDiffPipeline``, its ``ParameterAutoencoder`` or a
            ``StatsNormalizer`` (:func:`~pdiff_hf.novelty.resolve_normalizer`): the normalized units of the test,
            of the mean checkpoint and of the baselines made here.
        baselines: ``{name: (n, D)}`` parameter vectors; ``None``: every baseline of
            :func:`~pdiff_hf.novelty.make_baselines` (noise levels, ``average_k16``, ``gaussian``, ``pca_gaussian``,
            ``resampled``), as many as generated models, seeded with ``seed``.
        predictions: test predictions already computed (``{group: (n, N_test)}``, groups as in
            :func:`generalization_test`, e.g. from :func:`~pdiff_hf.novelty.analyze_novelty`'s
            ``GroupMetrics.test_predictions``); the others are computed here, in one batched call with the
            mean-checkpoint model.
        batch_size / models_per_chunk: chunking of :func:`~pdiff_hf.evaluation.batched.predict_with_parameters`.
        test_kwargs: ``num_bootstrap``, ``num_permutations``, ``pca_components``, ``confidence``.

    Raises:
        GeneralizationTestError / DimensionMismatchError: as :func:`generalization_test`, checked before any
        prediction; LayoutMismatchError: ``model`` does not fit ``layout``.
    """
    from ..evaluation.batched import predict_with_parameters
    from .baselines import make_baselines, resolve_normalizer

    train = _matrix(train_params, "training checkpoints", layout.dim, min_rows=MIN_TRAINING)
    heldout = _matrix(heldout_params, "held-out checkpoints", layout.dim, min_rows=MIN_HELDOUT)
    generated = _matrix(generated_params, "generated models", layout.dim, min_rows=2)
    vectors = {k: _matrix(v, f"baseline {k}", layout.dim, min_rows=2) for k, v in (baselines or {}).items()}
    layout.check_module(model)
    norm = resolve_normalizer(normalizer, layout, train)
    z_train = norm.normalize(train)
    if baselines is None:
        made = make_baselines(z_train, generated.shape[0], generator=torch.Generator().manual_seed(int(seed)),
                              pca_gaussian=True, resampled=True)
        vectors = {k: norm.denormalize(z) for k, (z, _) in made.items()}
    groups = {TRAINING: train, HELDOUT: heldout, GENERATED: generated, **vectors}
    known = {k: torch.as_tensor(v) for k, v in (predictions or {}).items()}
    todo = [k for k in groups if k not in known]
    mean_params = norm.denormalize(z_train.mean(0, keepdim=True))
    stacked = torch.cat([groups[k] for k in todo] + [mean_params])
    preds = predict_with_parameters(model, layout, stacked, data.test_x, batch_size, models_per_chunk)
    start = 0
    for k in todo:
        known[k] = preds[start : start + groups[k].shape[0]]
        start += groups[k].shape[0]
    return generalization_test(
        train, heldout, generated, vectors, predictions=known, labels=data.test_y, mean_prediction=preds[-1],
        normalizer=norm, seed=seed, **test_kwargs,
    )



def generalization_from_report(model, layout, report, heldout_params: torch.Tensor, data, normalizer=None,
                               seed: int = 0, **test_kwargs) -> GeneralizationResult:
    """:func:`evaluate_generalization` of a :class:`~pdiff_hf.novelty.NoveltyReport`'s training checkpoints, generated
    models and baselines (``analyze_novelty(..., pca_gaussian=True, resampled=True)`` gives every baseline), reusing
    its test predictions (``GroupMetrics.test_predictions``): only the held-out checkpoints and the mean-checkpoint
    model are evaluated again. ``normalizer`` should be the one of the analysis. Used by the demo and ``pdiff-hf
    evaluate --heldout``."""
    known = {TRAINING: report.original.test_predictions, GENERATED: report.generated.test_predictions}
    known.update({k: g.test_predictions for k, g in report.baselines.items()})
    known = {k: v for k, v in known.items() if v is not None}
    return evaluate_generalization(
        model, layout, report.original.params, heldout_params, report.generated.params, data, normalizer=normalizer,
        baselines={k: g.params for k, g in report.baselines.items()}, predictions=known, seed=seed, **test_kwargs,
    )
