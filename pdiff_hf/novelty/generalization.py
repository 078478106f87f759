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

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import DimensionMismatchError, GeneralizationTestError
from ..layout import check_finite
from .baselines import principal_components

GENERALIZING = "GENERALIZING"
MEMORIZING = "MEMORIZING"
AVERAGING = "AVERAGING"
OFF_DISTRIBUTION = "OFF-DISTRIBUTION"
INCONCLUSIVE = "INCONCLUSIVE"
VERDICTS = (GENERALIZING, MEMORIZING, AVERAGING, OFF_DISTRIBUTION, INCONCLUSIVE)

GENERATED = "generated"
HELDOUT = "heldout"
TRAINING = "training"

HELDOUT_EVERY = 10  # every 10th checkpoint of each run is held out
MIN_TRAINING = 10
MIN_HELDOUT = 5
PCA_COMPONENTS = 64  # PCA coordinates of the energy distance (capped at the rank of the training checkpoints)
RATIO_BAND = 1.5  # a ratio generated / held-out inside [1 / 1.5, 1.5] is "as held-out checkpoints"
ACCURACY_BAND_PP = 1.0  # a test-accuracy median within 1 pp of the held-out checkpoints' is "as held-out"
NULL_QUANTILE = 0.95  # "indistinguishable": energy distance <= the null's 95th percentile
CONFIDENCE = 0.95
NUM_BOOTSTRAP = 1000
NUM_PERMUTATIONS = 1000

# comparison key -> (statistic in words, kind: "ratio" / "difference" / "energy", verdict when decidedly below,
# verdict when decidedly above: None makes a ratio's band one-sided, [1/1.5, inf)), in the order the verdict reads them
COMPARISONS: Dict[str, Tuple[str, str, Optional[str], Optional[str]]] = {
    "nn_distance": ("mean nn_distance, group / held-out", "ratio", MEMORIZING, None),
    "error_overlap_gap": (
        "1 - mean max_iou (error overlap with the nearest-failing training checkpoint), group / held-out",
        "ratio", MEMORIZING, None,
    ),
    "diversity": ("diversity (mean pairwise rms_distance), group / held-out", "ratio", AVERAGING, OFF_DISTRIBUTION),
    "distance_to_mean": ("mean distance_to_mean, group / held-out", "ratio", AVERAGING, OFF_DISTRIBUTION),
    "mean_model_disagreement": (
        "1 - mean agreement with the mean-checkpoint model, group / held-out", "ratio", AVERAGING, OFF_DISTRIBUTION,
    ),
    "accuracy_std": ("test-accuracy standard deviation, group / held-out", "ratio", AVERAGING, OFF_DISTRIBUTION),
    "accuracy_median": (
        "test-accuracy median, group - held-out (pp)", "difference", OFF_DISTRIBUTION, OFF_DISTRIBUTION,
    ),
    "energy_distance": (
        "energy distance to the held-out checkpoints vs the permutation null (held-out vs training)", "energy",
        None, OFF_DISTRIBUTION,
    ),
}
VERDICT_RULES = (
    "MEMORIZING when nn_distance or error_overlap_gap is below its (one-sided) band; AVERAGING when diversity, "
    "distance_to_mean, mean_model_disagreement or accuracy_std is below its band; OFF-DISTRIBUTION when the energy "
    "distance is above the null's 95th percentile, or an interval above its band, or the accuracy median outside "
    "its band; GENERALIZING when the energy distance is within the null and every other interval inside its band "
    "(the accuracy spread and median decide when outside their bands, but a straddling one alone does not make the "
    "verdict INCONCLUSIVE); INCONCLUSIVE otherwise (an interval straddles an edge of its band)"
)
# order statistics of a few held-out accuracies: decide when outside their bands, never INCONCLUSIVE alone
ACCURACY_SPREAD = ("accuracy_std", "accuracy_median")
_VERDICT_ORDER = {
    MEMORIZING: ("nn_distance", "error_overlap_gap"),
    AVERAGING: ("diversity", "distance_to_mean", "mean_model_disagreement", "accuracy_std"),
}

DEFINITIONS = {
    "normalized_units": "per-entry standardization of the normalizer given (the pipeline's autoencoder: log space for "
    "BatchNorm running variances), else of the training checkpoints' per-entry mean and standard deviation",
    "rms_distance": "||z_a - z_b||_2 / sqrt(D') in normalized units, D' = entries not constant over the training "
    "checkpoints",
    "nn_distance": "rms_distance to the nearest training checkpoint (training subsample: the nearest other one)",
    "distance_to_mean": "rms_distance to the mean training checkpoint",
    "diversity": "mean rms_distance between two distinct models of the group",
    "energy_distance": "2 E|X-Y| - E|X-X'| - E|Y-Y'| (within-sample terms over distinct pairs) between the group and "
    "the held-out checkpoints, |.| the Euclidean distance of PCA coordinates V_k^T (z - mean) / sqrt(D') of the top "
    "k principal directions of the normalized training checkpoints (an rms_distance within their PCA subspace)",
    "energy_null": "energy distances between disjoint random subsets (as large as the group, and as the held-out set) "
    "of the pooled held-out and training checkpoints; threshold: its 95th percentile",
    "max_iou": "max over training checkpoints (other than itself) of the IoU of the sets of wrongly predicted test "
    "examples; 1 when both sets are empty",
    "mean_model_agreement": "fraction of test predictions equal to the mean-checkpoint model's",
    "intervals": "95% bootstrap percentile intervals: the group's models and the held-out checkpoints resampled "
    "with replacement, independently (seeded); a ratio with a zero denominator is infinite (null in JSON)",
    "bands": f"a ratio is 'as held-out' inside [1/{RATIO_BAND:g}, {RATIO_BAND:g}] (nn_distance and error_overlap_gap: "
    f"[1/{RATIO_BAND:g}, inf), held-out checkpoints of a trajectory sit one step from a training one), the accuracy "
    f"median within ±{ACCURACY_BAND_PP:g} pp; decided when the whole interval lies inside, below or above the band",
    "training": "a random subsample of the training checkpoints, as many as generated models (at most all)",
}


# ------------------------------------------------------------------------------------------------------- results
@dataclass
class GeneralizationResult:
    """Output of :func:`generalization_test`.

    Attributes:
        verdict: one of :data:`VERDICTS` for the generated models.
        decided_by: the comparison that decided it (a key of :data:`COMPARISONS`).
        summary: the three summary lines (verdict in words; the deciding comparison with its interval; generated vs
            held-out vs the best baseline).
        groups: ``{group: metrics}`` (JSON values) for ``generated``, ``heldout``, ``training`` and each baseline.
        comparisons: ``{group: {comparison: entry}}`` for every group but ``heldout``.
        settings: counts, dimensions, normalization, seed, resamples, bands, thresholds; ``definitions``: the words.
        pca_points: ``{group: (n, 2)}`` the first two PCA coordinates of every model (for the 2-D view; not in JSON).
        energy_null: ``{group size: (num_permutations,)}`` the null distribution (not in JSON).
        test_accuracy: ``{group: (n,)}`` test accuracies in percent, when predictions were given (not in JSON).
    """

    verdict: str
    decided_by: Optional[str]
    summary: List[str]
    groups: Dict[str, Dict]
    comparisons: Dict[str, Dict[str, Dict]]
    settings: Dict
    definitions: Dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    pca_points: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    energy_null: Dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    test_accuracy: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def best_baseline(self) -> Optional[str]:
        return best_baseline(self.to_dict())

    def to_dict(self) -> Dict:
        """``{"verdict", "decided_by", "summary", "groups", "comparisons", "settings", "definitions"}``: plain
        floats (``None`` for an infinite ratio), ints, strings and lists; :meth:`from_dict` reads it back."""
        return copy.deepcopy(
            {
                "verdict": self.verdict,
                "decided_by": self.decided_by,
                "summary": list(self.summary),
                "groups": self.groups,
                "comparisons": self.comparisons,
                "settings": self.settings,
                "definitions": self.definitions,
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping) -> "GeneralizationResult":
        """The result of a ``results.json`` entry (without the tensors); the verdict is recomputed from the
        comparisons and must agree with the stored one."""
        verdict, decided_by = generalization_verdict(data["comparisons"][GENERATED])
        if verdict != data["verdict"]:
            raise GeneralizationTestError(
                f"expected the stored verdict to follow from the stored comparisons, found {data['verdict']!r} stored "
                f"and {verdict!r} recomputed"
            )
        return cls(
            verdict=verdict,
            decided_by=decided_by,
            summary=list(data["summary"]),
            groups=copy.deepcopy(dict(data["groups"])),
            comparisons=copy.deepcopy(dict(data["comparisons"])),
            settings=copy.deepcopy(dict(data["settings"])),
            definitions=dict(data.get("definitions", DEFINITIONS)),
        )

    def table(self) -> str:
        """Markdown table of every group against the held-out checkpoints (:func:`format_generalization_table`)."""
        return format_generalization_table(self.to_dict())

    def markdown(self, plot_paths: Optional[Mapping[str, str]] = None, heading: bool = True, summary: bool = True) -> str:
        """The report section: the three summary lines, the table, the deciding rules and (optionally) plots."""
        return generalization_markdown(self.to_dict(), plot_paths, heading=heading, summary=summary)

    def save_plots(self, output_dir, prefix: str = "") -> Dict[str, "object"]:
        """Write ``generalization_energy.png`` (the deciding comparison: energy distances with the null and its
        threshold), ``generalization_pca.png`` (2-D PCA view of training, held-out and generated vectors) and, with
        predictions, ``generalization_accuracy.png`` (test accuracy of generated, held-out, training and
        ``average_k*``); returns ``{plot name: path}``."""
        from pathlib import Path

        from . import plots

        out = Path(output_dir)
        gen_size = self.comparisons[GENERATED]["energy_distance"]["null_size"]
        if gen_size not in self.energy_null or not self.pca_points:
            raise GeneralizationTestError(
                "expected a result of generalization_test with its null distribution and PCA coordinates to plot, "
                "found one without them (read back from JSON?)"
            )
        energies = {k: c["energy_distance"]["value"] for k, c in self.comparisons.items()}
        paths = {
            "generalization_energy": plots.plot_energy_distances(
                energies,
                self.energy_null[gen_size],
                self.comparisons[GENERATED]["energy_distance"]["threshold"],
                out / f"{prefix}generalization_energy.png",
            ),
            "generalization_pca": plots.plot_pca_view(
                {TRAINING: self.pca_points["training_all"], HELDOUT: self.pca_points[HELDOUT],
                 GENERATED: self.pca_points[GENERATED]},
                out / f"{prefix}generalization_pca.png",
            ),
        }
        if self.test_accuracy:
            others = {HELDOUT: self.test_accuracy[HELDOUT]}
            others.update({k: v for k, v in self.test_accuracy.items() if k.startswith("average")})
            paths["generalization_accuracy"] = plots.plot_accuracy_distribution(
                self.test_accuracy["training_all"],
                self.test_accuracy[GENERATED],
                out / f"{prefix}generalization_accuracy.png",
                others=others,
                title="Test accuracy: generated models, held-out and training checkpoints",
            )
        return paths


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


# ----------------------------------------------------------------------------------------------------- helpers
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

    Returns:
        :class:`GeneralizationResult` (``to_dict()`` for ``results.json``).

    Raises:
        GeneralizationTestError: fewer than 10 training, 5 held-out or 2 generated / baseline models, predictions
            without labels or the mean prediction, resample counts below 100, a baseline named like a group.
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
    pool = torch.cat([coords["training_all"], coords[HELDOUT]])
    d_pool = torch.cdist(pool, pool)
    d_pool.fill_diagonal_(0.0)
    d_hh = torch.cdist(coords[HELDOUT], coords[HELDOUT])
    d_hh.fill_diagonal_(0.0)
    nulls: Dict[int, torch.Tensor] = {}
    for size in sorted({min(len(groups_z[k]), t) for k in order if k != HELDOUT}):
        nulls[size] = _energy_null(d_pool, size, h, int(num_permutations), g)
    for name in order:
        if name == HELDOUT:
            continue
        c = coords[name]
        d_gg = torch.cdist(c, c)
        d_gg.fill_diagonal_(0.0)
        value = float(_energy(torch.cdist(c, coords[HELDOUT]), d_gg, d_hh))
        size = min(len(c), t)
        null = nulls[size]
        threshold = float(null.quantile(NULL_QUANTILE))
        comparisons[name]["energy_distance"] = {
            "statistic": COMPARISONS["energy_distance"][0],
            "value": _num(value),
            "threshold": _num(threshold),
            "null_median": _num(null.median()),
            "p_value": _num((1 + int((null >= value).sum())) / (1 + len(null))),
            "null_size": size,
            "permutations": len(null),
            "outcome": "above" if value > threshold else "within",
        }

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


# ------------------------------------------------------------------------------------------------------ verdict
def generalization_verdict(comparisons: Mapping[str, Mapping]) -> Tuple[str, Optional[str]]:
    """``(verdict, deciding comparison)`` from one group's comparisons (``to_dict()["comparisons"][group]``), so it
    can be recomputed from any ``results.json``.

    In order: MEMORIZING (``nn_distance`` or ``error_overlap_gap`` below the band), AVERAGING (``diversity``,
    ``distance_to_mean``, ``mean_model_disagreement`` or ``accuracy_std`` below the band), OFF-DISTRIBUTION (energy
    distance above the null's 95th percentile, else any interval above its band or the accuracy median outside
    it), GENERALIZING (energy distance within the null and every other interval within its band), else INCONCLUSIVE
    (the first comparison whose interval straddles an edge of its band). The accuracy spread and median
    (:data:`ACCURACY_SPREAD`) decide when their intervals lie outside their bands but do not make a verdict
    INCONCLUSIVE alone: a standard deviation or median of 5-20 held-out accuracies is rarely pinned to their bands.
    """
    outcome = {k: c["outcome"] for k, c in comparisons.items()}
    for verdict in (MEMORIZING, AVERAGING):
        for key in _VERDICT_ORDER[verdict]:
            if outcome.get(key) == "below":
                return verdict, key
    if outcome.get("energy_distance") == "above":
        return OFF_DISTRIBUTION, "energy_distance"
    for key in COMPARISONS:
        if key in outcome and (outcome[key] == "above" or (key == "accuracy_median" and outcome[key] == "below")):
            return OFF_DISTRIBUTION, key
    straddling = [k for k in COMPARISONS if k not in ACCURACY_SPREAD and outcome.get(k, "within") != "within"]
    if not straddling:
        return GENERALIZING, "energy_distance" if "energy_distance" in outcome else None
    return INCONCLUSIVE, straddling[0]


def best_baseline(data: Mapping) -> Optional[str]:
    """The baseline that passes the test best: by its own verdict (GENERALIZING, then INCONCLUSIVE, then AVERAGING or
    OFF-DISTRIBUTION, MEMORIZING last: a near-copy of the training checkpoints is as close to the held-out ones as
    they are, and is no generator), then by the smallest energy distance to the held-out checkpoints; ``None``
    without baselines."""
    rank = {GENERALIZING: 0, INCONCLUSIVE: 1, AVERAGING: 2, OFF_DISTRIBUTION: 2, MEMORIZING: 3}
    names = data["settings"].get("baselines", [])
    scored = [
        (rank.get(data["groups"][k].get("verdict"), 2), e, k)
        for k in names
        if (e := data["comparisons"][k]["energy_distance"]["value"]) is not None
    ]
    return min(scored)[2] if scored else None


_VERDICT_WORDS = {
    GENERALIZING: "the generated models are indistinguishable from held-out checkpoints of the same collection",
    MEMORIZING: "the generated models are closer to the training checkpoints than held-out checkpoints are",
    AVERAGING: "the generated models are less diverse, or closer to the mean checkpoint, than held-out checkpoints",
    OFF_DISTRIBUTION: "the generated models differ from held-out checkpoints more than two samples of the collection do",
    INCONCLUSIVE: "the test cannot decide at 95%: an interval straddles the edge of its band",
}


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "inf" if x is None else f"{x:.{digits}g}"


def describe_comparison(key: str, entry: Mapping) -> str:
    """One comparison in words with its interval or its null threshold."""
    if key == "energy_distance":
        rel = ">" if entry["outcome"] == "above" else "<="
        return (
            f"energy distance to held-out {_fmt(entry['value'])} {rel} {_fmt(entry['threshold'])}, the null's "
            f"{NULL_QUANTILE:.0%} quantile (held-out vs training, {entry['permutations']} permutations; "
            f"p = {_fmt(entry['p_value'], 2)})"
        )
    unit = " pp" if key == "accuracy_median" else ""
    return (
        f"{key} {_fmt(entry['value'])}{unit} [{_fmt(entry['low'])}, {_fmt(entry['high'])}] "
        f"({entry['statistic']}; band [{_fmt(entry['band'][0])}, {_fmt(entry['band'][1])}]: {entry['outcome']})"
    )


def summary_lines(data: Mapping) -> List[str]:
    """The three summary lines: the verdict in words; the comparison that decided it with its interval; generated vs
    held-out vs the best baseline (:func:`best_baseline`) in one line: energy distance to the held-out checkpoints
    with the null's threshold, diversity ratio and test accuracy median ± standard deviation."""
    verdict, key = data["verdict"], data["decided_by"]
    comp, groups = data["comparisons"], data["groups"]
    first = f"{verdict}: {_VERDICT_WORDS[verdict]}."
    second = "Decided by " + (describe_comparison(key, comp[GENERATED][key]) if key else "no comparison") + "."
    best = best_baseline(data)
    shown = [GENERATED] + ([best] if best else [])
    energy = comp[GENERATED]["energy_distance"]
    parts = [
        f"energy distance to held-out (indistinguishable up to {_fmt(energy['threshold'])}): "
        + ", ".join(f"{_label(k, best)} {_fmt(comp[k]['energy_distance']['value'])}" for k in shown + [TRAINING]),
        "diversity vs held-out: " + ", ".join(f"{_label(k, best)} {_fmt(comp[k]['diversity']['value'])}x" for k in shown),
    ]
    if groups[GENERATED].get("test_accuracy_median") is not None:
        parts.append(
            "test accuracy median ± std: "
            + ", ".join(
                f"{_label(k, best)} {groups[k]['test_accuracy_median']:.2f} ± {groups[k]['test_accuracy_std']:.2f}"
                for k in [GENERATED, HELDOUT] + shown[1:]
                if groups[k].get("test_accuracy_median") is not None
            )
        )
    return [first, second, " | ".join(parts)]


def _label(name: str, best: Optional[str]) -> str:
    return {HELDOUT: "held-out", TRAINING: "training subsample"}.get(
        name, f"best baseline {name}" if name == best else name
    )


# ------------------------------------------------------------------------------------------------------ markdown
def summary_markdown(summary: Sequence[str]) -> List[str]:
    """The three summary lines as markdown lines (the verdict in bold), one paragraph each."""
    return [f"**{summary[0]}**", "", summary[1], "", summary[2]]


def format_generalization_table(data: Mapping) -> str:
    """Markdown table: per group, the statistics and, for every group but ``heldout``, the ratios to the held-out
    checkpoints with their intervals, the energy distance and the group's own verdict."""
    fs = data["settings"]["function_space"]
    head = "| group | n | nn dist | dist to mean | diversity | energy (thr) |"
    head += " acc median ± std | max-IoU | mean-model agree |" if fs else ""
    head += " nn ratio | diversity ratio | dist-to-mean ratio | verdict |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def ratio(c: Mapping, key: str) -> str:
        e = c.get(key)
        return "-" if e is None else f"{_fmt(e['value'])} [{_fmt(e['low'])}, {_fmt(e['high'])}]"

    for name, g in data["groups"].items():
        c = data["comparisons"].get(name, {})
        e = c.get("energy_distance")
        row = (
            f"| {name} | {g['count']} | {_fmt(g['nn_distance'], 4)} | {_fmt(g['distance_to_mean'], 4)} | "
            f"{_fmt(g['diversity'], 4)} | "
            + ("-" if e is None else f"{_fmt(e['value'])} ({_fmt(e['threshold'])})")
            + " |"
        )
        if fs:
            if g.get("test_accuracy_median") is None:
                row += " - | - | - |"
            else:
                row += (
                    f" {g['test_accuracy_median']:.2f} ± {g['test_accuracy_std']:.2f} | {g['max_iou']:.3f} | "
                    f"{g['mean_model_agreement']:.4f} |"
                )
        row += f" {ratio(c, 'nn_distance')} | {ratio(c, 'diversity')} | {ratio(c, 'distance_to_mean')} |"
        row += f" {g.get('verdict', '(reference)')} |"
        lines.append(row)
    return "\n".join(lines)


def generalization_markdown(
    data: Mapping, plot_paths: Optional[Mapping[str, str]] = None, heading: bool = True, summary: bool = True
) -> str:
    """``## Held-out generalization test`` (without it: ``heading=False``): the summary lines (``summary=False``
    leaves them to the caller, e.g. the top of a report), the table, every comparison of the generated models with
    its interval, the settings and rules, and the plots (paths as given)."""
    s = data["settings"]
    lines = ["## Held-out generalization test", ""] if heading else []
    if summary:
        lines += summary_markdown(data["summary"]) + [""]
    lines += [
        f"{s['num_training']} training checkpoints (fitted on), {s['num_heldout']} held-out checkpoints of the same "
        f"collection (never fitted on), {s['num_generated']} generated models; `training` is a random subsample of "
        f"{s['training_subsample']} training checkpoints. Distances are rms_distances in normalized units "
        f"({s['normalization']}) over D'={s['distance_dims']} of D={s['dims']} entries; the energy distance uses "
        f"{s['pca_components']} PCA coordinates of the training checkpoints.",
        "",
        format_generalization_table(data),
        "",
        "### Generated vs held-out",
        "",
    ]
    lines += [f"- {describe_comparison(k, e)}" for k, e in data["comparisons"][GENERATED].items()]
    lines += ["", "### Rules", ""]
    lines += [f"- {k}: {v}" for k, v in data["definitions"].items()]
    lines.append(f"- verdict, in order: {VERDICT_RULES}")
    if plot_paths:
        lines += ["", "### Plots", ""]
        lines += [f"![{name}]({path})" for name, path in plot_paths.items()]
    return "\n".join(lines) + "\n"
