"""New or memorized? Novelty of generated parameters against simple baselines.

Zeng et al. (2025, arXiv 2506.07998) found that p-diff samples sit close to the average of the training checkpoints
and behave like simple baselines. :func:`analyze_novelty` therefore evaluates generated models next to baselines
built from the same checkpoints, every group exactly like the others, and says plainly whether they are new.

| module | what |
|---|---|
| :mod:`.baselines` | the normalized space; noisy checkpoints, checkpoint averages, a per-dimension Gaussian, a Gaussian in the checkpoints' PCA subspace, resampled checkpoints |
| :mod:`.types` | :class:`GroupMetrics`, the per-model metrics of one group |
| :mod:`.metrics` | weight-space and function-space metrics; :func:`analyze_novelty` |
| :mod:`.verdict` | thresholds, definitions, the verdict rules (a function of the JSON summary alone) |
| :mod:`.report` | :class:`NoveltyReport`, markdown tables, :func:`write_report` (plots, report.md, results.json) |
| :mod:`.plots` | matplotlib figures (Agg, written atomically); imported on first use |
| :mod:`.allocator` | :func:`tune_cpu_allocator`, called by entry points only, never by the library |
| :mod:`.generalization` | the held-out generalization test: generated models against checkpoints of the same collection that were never fitted on (:func:`heldout_split`, :func:`generalization_test`) |
| :mod:`.generalization_network` | the test on a network: test predictions of every group (:func:`evaluate_generalization`, :func:`generalization_from_report`) |
| :mod:`.generalization_report` | the verdict words, bands and rules, :class:`GeneralizationResult`, summary lines, table and markdown |
"""

from .allocator import allocator_tuned, tune_cpu_allocator
from .baselines import (
    AVERAGE_K,
    NOISE_LEVELS,
    StatsNormalizer,
    make_baselines,
    pca_gaussian_samples,
    principal_components,
    resolve_normalizer,
)
from .generalization import generalization_test, heldout_split
from .generalization_network import evaluate_generalization, generalization_from_report
from .generalization_report import GeneralizationResult, generalization_verdict
from .intervals import bootstrap_intervals
from .metrics import analyze_novelty
from .report import (
    NoveltyReport,
    format_accuracy_table,
    format_intervals_table,
    format_novelty_table,
    format_report,
    write_report,
)
from .types import GroupMetrics
from .verdict import (
    BOOTSTRAP_RESAMPLES,
    COLLAPSE_DISAGREEMENT_RATIO,
    COLLAPSE_DISTANCE_RATIO,
    COMPARISONS,
    CONFIDENCE,
    DEFINITIONS,
    GENERATED,
    GOOD_MARGIN_PP,
    MEMORIZATION_DISTANCE_RATIO,
    MEMORIZATION_IOU_GAP_RATIO,
    NOISE_MATCH_PP,
    ORIGINAL,
    comparison_outcome,
    noise_reference,
    novelty_verdict,
    reference_noise,
    verdict_thresholds,
)

__all__ = [
    "AVERAGE_K",
    "BOOTSTRAP_RESAMPLES",
    "COLLAPSE_DISAGREEMENT_RATIO",
    "COLLAPSE_DISTANCE_RATIO",
    "COMPARISONS",
    "CONFIDENCE",
    "DEFINITIONS",
    "GENERATED",
    "GOOD_MARGIN_PP",
    "GeneralizationResult",
    "GroupMetrics",
    "MEMORIZATION_DISTANCE_RATIO",
    "MEMORIZATION_IOU_GAP_RATIO",
    "NOISE_LEVELS",
    "NOISE_MATCH_PP",
    "NoveltyReport",
    "ORIGINAL",
    "StatsNormalizer",
    "allocator_tuned",
    "analyze_novelty",
    "bootstrap_intervals",
    "comparison_outcome",
    "evaluate_generalization",
    "format_accuracy_table",
    "format_intervals_table",
    "format_novelty_table",
    "format_report",
    "generalization_from_report",
    "generalization_test",
    "generalization_verdict",
    "heldout_split",
    "make_baselines",
    "noise_reference",
    "novelty_verdict",
    "pca_gaussian_samples",
    "principal_components",
    "reference_noise",
    "resolve_normalizer",
    "tune_cpu_allocator",
    "verdict_thresholds",
    "write_report",
]
