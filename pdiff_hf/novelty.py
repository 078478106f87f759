"""New or memorized? Novelty of generated parameters against simple baselines (issue 4).

Zeng et al. (2025, arXiv 2506.07998) found that p-diff samples sit close to the average of the training checkpoints
and behave like simple baselines. :func:`analyze_novelty` therefore evaluates generated models next to baselines
built from the same checkpoints, every group exactly like the others (same network, same batched evaluation, same
count by default):

* ``noise_<a>``: training checkpoints plus Gaussian noise of std ``a`` in normalized space (``a`` in
  :data:`NOISE_LEVELS`);
* ``average_k<k>``: means of ``k`` distinct, randomly chosen training checkpoints;
* ``gaussian``: samples of a per-dimension Gaussian fitted to the training checkpoints.

Definitions (all recorded in the summary's ``novelty.definitions``):

* **normalized space**: the per-dimension standardization of the pipeline's autoencoder (BatchNorm running
  variances in log space), or statistics of the training checkpoints when no pipeline is given. Distances are
  **RMS distances** ``||z_a - z_b||_2 / sqrt(D')`` in that space (units of one standard deviation per entry; noise of
  std ``a`` moves a checkpoint by about ``a``). ``D'`` excludes entries that are constant over the training
  checkpoints.
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
* **good**: test accuracy ``>=`` the originals' mean test accuracy minus :data:`GOOD_MARGIN_PP` (1 pp).
* **novel**: max-IoU below the originals' mean pairwise IoU (how alike two distinct training checkpoints fail on
  average).

Test accuracy is what is reported; anything that *selects* a model (``best_by_val``) uses validation accuracy.
All metrics are matrix operations (``torch.cdist``, error-set IoU as ``E_a @ E_b.T``, agreement as one matmul per
class); there is no Python loop over pairs of models.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .data import ClassificationSplits
from .errors import CheckpointDatasetError, DimensionMismatchError, PDiffError
from .evaluation import accuracy_from_predictions, predict_with_parameters, summarize_accuracies
from .layout import ParamLayout, check_finite
from .normalization import compute_stats, denormalize, normalize

NOISE_LEVELS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.15)
AVERAGE_K = 16
GOOD_MARGIN_PP = 1.0
# Verdict thresholds (stored in every summary under novelty.thresholds).
# Each compares the generated models' median with the originals' own (leave-one-out) median, so that new,
# independent checkpoints of the same runs pass as novel whatever the scale of the task.
MEMORIZATION_DISTANCE_RATIO = 0.5  # memorizing: generated NN distance < ratio * originals' NN distance, or
MEMORIZATION_IOU_GAP_RATIO = 0.5  # 1 - generated max-IoU < ratio * (1 - originals' max-IoU) (functional copies)
COLLAPSE_DISTANCE_RATIO = 0.5  # collapsed: generated distance to the mean checkpoint < ratio * originals', or
COLLAPSE_DISAGREEMENT_RATIO = 0.5  # 1 - agreement with the mean-checkpoint model < ratio * originals' (1 - agreement)
NOISE_MATCH_PP = 1.0  # a noise baseline is "at equal accuracy" when its mean is within this many pp of generated

ORIGINAL = "original"
GENERATED = "generated"

DEFINITIONS = {
    "normalized_space": "per-dimension standardization of the pipeline's autoencoder (log space for BatchNorm "
    "running variances), or of the training checkpoints when no pipeline is given",
    "distance": "RMS distance in normalized space, ||z_a - z_b||_2 / sqrt(D'), D' = entries not constant over the "
    "training checkpoints",
    "nn_distance": "distance to the nearest training checkpoint (for training checkpoints: the nearest other one)",
    "max_iou": "max over training checkpoints (other than itself) of the IoU of the sets of wrongly predicted test "
    "examples; 1 when both sets are empty",
    "max_agreement": "max over training checkpoints (other than itself) of the fraction of identical test predictions",
    "nn_agreement": "fraction of identical test predictions with the weight-space nearest training checkpoint",
    "distance_to_mean": "distance to the mean training checkpoint (mean in normalized space)",
    "mean_model_agreement": "fraction of identical test predictions with the mean-checkpoint model",
    "pairwise_mean_iou": "mean error-set IoU over pairs of distinct models of the same group",
    "good": "test accuracy >= originals' mean test accuracy - 1 pp",
    "novel": "max_iou < originals' mean pairwise IoU",
    "best_by_val": "test accuracy of the model with the highest validation accuracy",
}


# ------------------------------------------------------------------------------------------------------ allocator
_ALLOCATOR_TUNED = False


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (what ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` do), so that the multi-megabyte intermediates of batched forward passes are reused
    instead of being mapped and unmapped on every call. On MNIST-1D this removes ~25 s of kernel page-fault time from
    the first analysis in a process (after which glibc's own adaptive threshold catches up). PyTorch's CPU tuning
    guide gives the same advice (or jemalloc / tcmalloc).

    Only raises the thresholds, once per process, on Linux with glibc, and not when either environment variable is
    set; returns whether the thresholds are in effect."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    _ALLOCATOR_TUNED = bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(
        mallopt(m_trim_threshold, int(trim_threshold))
    )
    return _ALLOCATOR_TUNED


# ------------------------------------------------------------------------------------------------- normalization
class StatsNormalizer:
    """Per-dimension standardization ``(x - mean) / std`` (log space where ``log_mask``), as in
    :mod:`pdiff_hf.normalization`."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, log_mask: torch.Tensor, source: str = "statistics"):
        self.mean = mean.detach().to("cpu", torch.float32)
        self.std = std.detach().to("cpu", torch.float32)
        self.log_mask = log_mask.detach().to("cpu", torch.bool)
        self.source = source

    @classmethod
    def from_checkpoints(cls, params: torch.Tensor, layout: ParamLayout) -> "StatsNormalizer":
        mask = layout.log_space_mask()
        mean, std = compute_stats(params, mask)
        return cls(mean, std, mask, source="training checkpoint statistics")

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        return normalize(params.float(), self.mean, self.std, self.log_mask)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return denormalize(z.float(), self.mean, self.std, self.log_mask)


def resolve_normalizer(normalizer, layout: ParamLayout, train_params: torch.Tensor) -> StatsNormalizer:
    """A :class:`StatsNormalizer` from ``None`` (statistics of ``train_params``), a ``PDiffPipeline`` or a
    ``ParameterAutoencoder`` (its ``norm_mean`` / ``norm_std`` / ``log_mask``), or a :class:`StatsNormalizer`."""
    if normalizer is None:
        return StatsNormalizer.from_checkpoints(train_params, layout)
    source = "pipeline autoencoder"
    if hasattr(normalizer, "autoencoder"):
        normalizer = normalizer.autoencoder
    if isinstance(normalizer, StatsNormalizer):
        found = normalizer
    elif all(hasattr(normalizer, a) for a in ("norm_mean", "norm_std", "log_mask")):
        found = StatsNormalizer(normalizer.norm_mean, normalizer.norm_std, normalizer.log_mask, source=source)
    else:
        raise PDiffError(
            "expected normalizer to be None, a PDiffPipeline, a ParameterAutoencoder or a StatsNormalizer, "
            f"found {type(normalizer).__name__}"
        )
    if found.dim != layout.dim:
        raise DimensionMismatchError(
            f"the normalizer standardizes D={found.dim} entries, the parameter layout has D={layout.dim} "
            f"[{layout.describe()}]"
        )
    return found


# ------------------------------------------------------------------------------------------------------ baselines
def make_baselines(
    z_train: torch.Tensor,
    num: int,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    average_k: Optional[int] = AVERAGE_K,
    gaussian: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tuple[torch.Tensor, Dict]]:
    """Baselines in normalized space from normalized training checkpoints ``(T, D)``: ``{name: (z (num, D),
    settings)}`` in the order noise levels, average, gaussian. Seeded by ``generator``."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    t, d = z_train.shape
    out: Dict[str, Tuple[torch.Tensor, Dict]] = {}
    if num < 1:
        return out
    for amp in noise_levels:
        amp = float(amp)
        if not (amp >= 0 and math.isfinite(amp)):
            raise PDiffError(f"expected non-negative noise levels, found {amp}")
        src = torch.randint(0, t, (num,), generator=gen)
        z = z_train[src] + amp * torch.randn(num, d, generator=gen)
        out[f"noise_{amp:g}"] = (z, {"kind": "noise", "amplitude": amp})
    if average_k is not None:
        if average_k < 1:
            raise PDiffError(f"expected average_k >= 1, found {average_k}")
        k = min(int(average_k), t)
        idx = torch.rand(num, t, generator=gen).argsort(dim=1)[:, :k]
        out[f"average_k{k}"] = (z_train[idx].mean(dim=1), {"kind": "average", "k": k})
    if gaussian:
        mu = z_train.mean(0)
        sd = z_train.std(0, unbiased=False)
        out["gaussian"] = (mu + sd * torch.randn(num, d, generator=gen), {"kind": "gaussian"})
    return out


# ------------------------------------------------------------------------------------------------------- results
@dataclass
class GroupMetrics:
    """Per-model metrics of one group (``original``, ``generated`` or a baseline); tensors have one entry per
    model. ``nn_index`` / ``max_iou_index`` index the training checkpoints."""

    name: str
    kind: str
    params: torch.Tensor
    test_accuracy: torch.Tensor
    val_accuracy: Optional[torch.Tensor]
    nn_distance: torch.Tensor
    nn_index: torch.Tensor
    max_iou: torch.Tensor
    max_iou_index: torch.Tensor
    max_agreement: torch.Tensor
    nn_agreement: torch.Tensor
    distance_to_mean: torch.Tensor
    mean_model_agreement: torch.Tensor
    pairwise_mean_iou: Optional[float]
    settings: Dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.test_accuracy.numel())


@dataclass
class NoveltyReport:
    """Output of :func:`analyze_novelty`.

    Attributes:
        groups: ``original``, ``generated`` then the baselines, each a :class:`GroupMetrics`.
        summary: the JSON-serializable summary (``original``, ``generated``, ``baselines``, ``novelty``,
            ``verdict``); :meth:`to_dict` returns a copy.
        verdict: plain-text verdict lines (:func:`novelty_verdict`).
    """

    groups: Dict[str, GroupMetrics]
    summary: Dict
    verdict: List[str]

    @property
    def original(self) -> GroupMetrics:
        return self.groups[ORIGINAL]

    @property
    def generated(self) -> GroupMetrics:
        return self.groups[GENERATED]

    @property
    def baselines(self) -> Dict[str, GroupMetrics]:
        return {k: v for k, v in self.groups.items() if k not in (ORIGINAL, GENERATED)}

    @property
    def thresholds(self) -> Dict:
        return self.summary["novelty"]["thresholds"]

    def to_dict(self) -> Dict:
        """``{"original", "generated", "baselines", "novelty", "verdict"}``: plain floats, ints, strings, lists."""
        import copy

        return copy.deepcopy(self.summary)

    def table(self) -> str:
        """Markdown table of every group (see :func:`format_novelty_table`)."""
        return format_novelty_table(self.summary)

    def save_plots(self, output_dir: Union[str, Path], prefix: str = "") -> Dict[str, Path]:
        """Write ``accuracy_vs_novelty.png``, ``nn_distance_hist.png`` and ``accuracy_distribution.png`` (each
        atomically) to ``output_dir``; returns ``{plot name: path}``."""
        from . import plots

        out = Path(output_dir)
        th = self.thresholds
        points = {name: (g.max_iou, g.test_accuracy) for name, g in self.groups.items()}
        distances = {name: g.nn_distance for name, g in self.groups.items()}
        return {
            "accuracy_vs_novelty": plots.plot_accuracy_vs_novelty(
                points,
                out / f"{prefix}accuracy_vs_novelty.png",
                good_threshold=th["good_test_accuracy"],
                novel_threshold=th["novel_max_iou"],
            ),
            "nn_distance_hist": plots.plot_nn_distance_histograms(distances, out / f"{prefix}nn_distance_hist.png"),
            "accuracy_distribution": plots.plot_accuracy_distribution(
                self.original.test_accuracy,
                self.generated.test_accuracy,
                out / f"{prefix}accuracy_distribution.png",
            ),
        }

    def markdown(self, plot_paths: Optional[Mapping[str, Union[str, Path]]] = None, relative_to=None) -> str:
        """A markdown section: table, verdict, thresholds and (optionally) the plots."""
        th = self.thresholds
        nov = self.summary["novelty"]
        lines = ["## Novelty against simple baselines", "", self.table(), "", "### Verdict", ""]
        lines += [f"- {v}" for v in self.verdict]
        lines += [
            "",
            "### Definitions and thresholds",
            "",
            f"- good: test accuracy >= {th['good_test_accuracy']:.2f}% (originals' mean - {th['good_margin_pp']:g} pp)",
            f"- novel: max-IoU < {th['novel_max_iou']:.4f} (originals' mean pairwise error-set IoU)",
            f"- memorizing: {th['memorization_rule']}",
            f"- collapsed to the average: {th['collapse_rule']}",
            f"- normalized space: {nov['normalization']}; distances are RMS per entry over D'={nov['distance_dims']} "
            f"of D={nov['dims']} entries",
        ]
        for key in ("max_iou", "max_agreement", "nn_agreement"):
            lines.append(f"- {key}: {DEFINITIONS[key]}")
        if plot_paths:
            lines += ["", "### Plots", ""]
            for name, path in plot_paths.items():
                p = Path(path)
                if relative_to is not None:
                    try:
                        p = p.relative_to(relative_to)
                    except ValueError:
                        pass
                lines.append(f"![{name}]({p.as_posix()})")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ analysis
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
    tune_allocator: bool = True,
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
            a :class:`StatsNormalizer`; defines the normalized space of noise, averages and distances.
        num_baseline: models per baseline (default: as many as generated); 0 disables the baselines.
        noise_levels: noise stds in normalized space; ``average_k``: checkpoints per average (``None`` disables);
            ``gaussian``: include the per-dimension Gaussian.
        seed: seeds a ``torch.Generator`` for every baseline.
        train_val_accuracy: validation accuracies (%) of the training checkpoints, e.g. a checkpoint dataset's
            ``val_accuracy`` column; saves evaluating them again (they are only used for ``best_by_val``).
        batch_size / models_per_chunk: chunking of :func:`~pdiff_hf.evaluation.predict_with_parameters`; the defaults
            (500 model-examples per vmapped call) measured fastest for MNIST1DCNN on CPU.
        tune_allocator: call :func:`tune_cpu_allocator` first (raises glibc malloc thresholds for this process;
            halves the first analysis on MNIST-1D). Pass ``False`` to leave the allocator alone.

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
    if tune_allocator:
        tune_cpu_allocator()
    n_train, n_gen = train.shape[0], gen.shape[0]
    num_baseline = n_gen if num_baseline is None else int(num_baseline)

    # --- normalized space and baselines
    z_train = norm.normalize(train)
    z_gen = norm.normalize(gen)
    check_finite(z_train, "normalized training checkpoints")
    baselines = make_baselines(
        z_train, num_baseline, noise_levels, average_k, gaussian, torch.Generator().manual_seed(int(seed))
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
    sizes = [raw_groups[k].shape[0] for k in names]
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    span = {k: (bounds[i], bounds[i + 1]) for i, k in enumerate(names)}

    # --- predictions: every model (and the mean checkpoint, last) on the test split in one batched call
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

    # --- weight space: RMS distances in normalized space over non-constant entries
    varying = ~(train == train[0]).all(0)
    if not bool(varying.any()):
        raise CheckpointDatasetError(
            f"expected training checkpoints that differ, found {n_train} identical checkpoints; novelty is undefined"
        )
    d_eff = int(varying.sum())
    z_all = torch.cat([z_groups[k] for k in names])[:, varying].double()
    z_ref = z_train[:, varying].double()
    dist = torch.cdist(z_all, z_ref) / math.sqrt(d_eff)
    dist_to_mean = (z_all - z_mean[:, varying].double()).norm(dim=1) / math.sqrt(d_eff)

    # --- function space: error-set IoU and prediction agreement with every training checkpoint
    labels = data.test_y.to(preds.device)
    errors = (preds != labels).float()
    err_train = errors[:n_train]
    e_size = errors.sum(1)
    iou = _iou(errors @ err_train.T, e_size, e_size[:n_train])
    num_classes = int(max(int(preds.max()), int(labels.max()), int(mean_pred.max()))) + 1
    agree = torch.zeros(preds.shape[0], n_train)
    for c in range(num_classes):
        onehot = (preds == c).float()
        agree += onehot @ onehot[:n_train].T
    agree /= preds.shape[1]
    mean_agree = (preds == mean_pred[None]).float().mean(1)

    # a training checkpoint is not its own neighbour
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
            pairwise_mean_iou=(
                _pairwise_mean_iou(errors[a:b]) if k != ORIGINAL else None
            ),
            settings=settings.get(k, {}),
        )
    # originals: the (T, T) block is already there
    orig_iou = iou[:n_train].double()
    groups[ORIGINAL].pairwise_mean_iou = _num(
        orig_iou.masked_fill(torch.eye(n_train, dtype=torch.bool), 0.0).sum() / (n_train * (n_train - 1))
    )

    summary = _summarize(groups, norm, layout.dim, d_eff, mean_raw_acc=float(accuracy_from_predictions(mean_pred[None], labels)[0]))
    verdict = novelty_verdict(summary)
    summary["verdict"] = verdict
    return NoveltyReport(groups=groups, summary=summary, verdict=verdict)


def _summarize(groups: Dict[str, GroupMetrics], norm: StatsNormalizer, dim: int, d_eff: int, mean_raw_acc: float) -> Dict:
    orig = groups[ORIGINAL]
    orig_mean = float(orig.test_accuracy.double().mean())
    good_acc = orig_mean - GOOD_MARGIN_PP
    novel_iou = float(orig.pairwise_mean_iou)
    thresholds = {
        "good_test_accuracy": _num(good_acc),
        "good_margin_pp": GOOD_MARGIN_PP,
        "good_rule": f"test accuracy >= original mean - {GOOD_MARGIN_PP:g} pp",
        "novel_max_iou": _num(novel_iou),
        "novel_rule": "max-IoU < originals' mean pairwise IoU",
        "memorization_distance_ratio": MEMORIZATION_DISTANCE_RATIO,
        "memorization_iou_gap_ratio": MEMORIZATION_IOU_GAP_RATIO,
        "memorization_rule": f"generated median nn_distance < {MEMORIZATION_DISTANCE_RATIO:g} x originals' median "
        f"nn_distance, or 1 - generated median max_iou < {MEMORIZATION_IOU_GAP_RATIO:g} x (1 - originals' median "
        "max_iou)",
        "collapse_distance_ratio": COLLAPSE_DISTANCE_RATIO,
        "collapse_disagreement_ratio": COLLAPSE_DISAGREEMENT_RATIO,
        "collapse_rule": f"generated median distance_to_mean < {COLLAPSE_DISTANCE_RATIO:g} x originals', or 1 - "
        f"generated median mean_model_agreement < {COLLAPSE_DISAGREEMENT_RATIO:g} x (1 - originals' median "
        "mean_model_agreement)",
        "noise_match_pp": NOISE_MATCH_PP,
    }

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
    return summary


# -------------------------------------------------------------------------------------------------------- verdict
def reference_noise(summary: Mapping) -> Optional[str]:
    """The noise baseline to compare the generated models with "at equal accuracy": the largest amplitude whose mean
    test accuracy is at least the generated mean minus :data:`NOISE_MATCH_PP` (within 1 pp, or more accurate: more
    noise is more novel, so this is the strongest noise baseline that is not worse); if every amplitude is worse,
    the one with the closest mean accuracy."""
    gen_mean = summary[GENERATED]["mean"]
    noise = [
        (float(v.get("amplitude", 0.0)), k, float(v["mean"]))
        for k, v in summary.get("baselines", {}).items()
        if v.get("kind") == "noise"
    ]
    if not noise:
        return None
    at_least = [n for n in noise if n[2] >= gen_mean - NOISE_MATCH_PP]
    if at_least:
        return max(at_least)[1]
    return min(noise, key=lambda n: (abs(n[2] - gen_mean), n[0]))[1]


def _ratio(a: float, b: float) -> float:
    if b <= 0:
        return 0.0 if a <= 0 else float("inf")
    return a / b


def novelty_verdict(summary: Mapping) -> List[str]:
    """Plain-text verdict lines from a summary (``NoveltyReport.summary`` or the same keys of a ``results.json``):
    accuracy; novelty against the noise baseline at equal accuracy; memorization; collapse to the checkpoint
    average; the good-and-novel fraction; and a one-line overall verdict (``MEMORIZING``, ``COLLAPSED TO THE
    CHECKPOINT AVERAGE``, ``NOVEL`` or ``NOT MORE NOVEL THAN NOISE``)."""
    orig, gen = summary[ORIGINAL], summary[GENERATED]
    nov = summary["novelty"]
    th = nov["thresholds"]
    groups = nov["groups"]
    go, gg = groups[ORIGINAL], groups[GENERATED]
    lines = []

    gap = orig["mean"] - gen["mean"]
    best = gen.get("best_by_val", gen["best"])
    lines.append(
        f"Accuracy: generated mean {gen['mean']:.2f}% (best by validation {best:.2f}%) vs original mean "
        f"{orig['mean']:.2f}%; {gg['good_fraction']:.0%} of generated models are good (test accuracy >= "
        f"{th['good_test_accuracy']:.2f}%)."
    )

    g_nn, o_nn = gg["nn_distance"]["median"], go["nn_distance"]["median"]
    g_iou, o_iou = gg["max_iou"]["median"], go["max_iou"]["median"]

    more_novel = None
    ref_within = False
    ref = nov.get("reference_noise") or reference_noise(summary)
    if ref is not None:
        rb, rn = summary["baselines"][ref], groups[ref]
        n_iou, n_nn = rn["max_iou"]["median"], rn["nn_distance"]["median"]
        more_novel = g_iou < n_iou
        ref_within = abs(rb["mean"] - gen["mean"]) <= th["noise_match_pp"]
        if ref_within:
            how = f"the largest noise amplitude within {th['noise_match_pp']:g} pp of their mean accuracy"
        elif rb["mean"] > gen["mean"]:
            how = f"the largest noise amplitude, still more accurate by over {th['noise_match_pp']:g} pp"
        else:
            how = f"the most accurate noise amplitude, less accurate by over {th['noise_match_pp']:g} pp"
        lines.append(
            f"Novelty vs noise: generated models are {'MORE' if more_novel else 'NOT MORE'} novel than {ref} "
            f"({how}: mean {rb['mean']:.2f}% vs {gen['mean']:.2f}%): median max-IoU {g_iou:.3f} vs {n_iou:.3f}, "
            f"median nearest-checkpoint distance {g_nn:.4g} vs {n_nn:.4g}."
        )

    ratio = _ratio(g_nn, o_nn)
    iou_ratio = _ratio(1.0 - g_iou, 1.0 - o_iou) if o_iou < 1.0 else float("inf")
    weight_copy = ratio < th["memorization_distance_ratio"]
    function_copy = iou_ratio < th["memorization_iou_gap_ratio"]
    memorizing = weight_copy or function_copy
    lines.append(
        f"Memorization: {'MEMORIZING' if memorizing else 'not memorizing'} - median distance to the nearest "
        f"training checkpoint {g_nn:.4g} = {ratio:.2f}x the originals' own nearest-neighbour distance {o_nn:.4g} "
        f"(memorizing below {th['memorization_distance_ratio']:g}x); median max-IoU {g_iou:.3f} vs originals "
        f"{o_iou:.3f} (functional copies when 1 - max-IoU is below {th['memorization_iou_gap_ratio']:g}x the "
        f"originals')"
        + (": generated models are near-copies of training checkpoints." if memorizing else ".")
    )

    g_dm, o_dm = gg["distance_to_mean"]["median"], go["distance_to_mean"]["median"]
    g_ag, o_ag = gg["mean_model_agreement"]["median"], go["mean_model_agreement"]["median"]
    d_ratio = _ratio(g_dm, o_dm)
    ag_ratio = _ratio(1.0 - g_ag, 1.0 - o_ag) if o_ag < 1.0 else float("inf")
    collapsed = d_ratio < th["collapse_distance_ratio"] or ag_ratio < th["collapse_disagreement_ratio"]
    lines.append(
        f"Average collapse: {'COLLAPSED to the checkpoint average' if collapsed else 'no collapse to the checkpoint average'}"
        f" - median distance to the mean checkpoint {g_dm:.4g} = {d_ratio:.2f}x the originals' {o_dm:.4g} "
        f"(collapse below {th['collapse_distance_ratio']:g}x); median prediction agreement with the mean-checkpoint "
        f"model {g_ag:.3f} vs originals {o_ag:.3f} (collapse when 1 - agreement is below "
        f"{th['collapse_disagreement_ratio']:g}x the originals')."
    )

    baseline_gn = {k: v["good_and_novel_fraction"] for k, v in summary.get("baselines", {}).items()}
    best_base = max(baseline_gn, key=baseline_gn.get) if baseline_gn else None
    lines.append(
        f"Good and novel: {gg['good_and_novel_fraction']:.0%} of generated models vs {go['good_and_novel_fraction']:.0%} "
        f"of originals"
        + (f" and {baseline_gn[best_base]:.0%} of {best_base} (best baseline)" if best_base else "")
        + f" (good: test accuracy >= {th['good_test_accuracy']:.2f}%; novel: max-IoU < {th['novel_max_iou']:.3f}, "
        f"the originals' mean pairwise IoU)."
    )

    flags = []
    if memorizing:
        flags.append("MEMORIZING")
    if collapsed:
        flags.append("COLLAPSED TO THE CHECKPOINT AVERAGE")
    notes = []
    if flags:
        overall = " and ".join(flags)
    elif more_novel is False:
        overall = "NOT MORE NOVEL THAN NOISE - generated models fail like noisy copies of training checkpoints"
    else:
        overall = "NOVEL - neither copies of training checkpoints nor their average"
        if more_novel:
            overall += ", and more novel than noise" + (" at equal accuracy" if ref_within else "")
            if not ref_within:
                notes.append("no noise amplitude matches their accuracy, so the noise comparison is not at equal accuracy")
    if gap > GOOD_MARGIN_PP:
        notes.append(f"at lower accuracy: mean {gap:.2f} pp below the originals")
    if best_base is not None and baseline_gn[best_base] > gg["good_and_novel_fraction"]:
        notes.append(
            f"the {best_base} baseline gives more good-and-novel models ({baseline_gn[best_base]:.0%} vs "
            f"{gg['good_and_novel_fraction']:.0%})"
        )
    lines.append(f"Verdict: {overall}" + (f" ({'; '.join(notes)})" if notes else "") + ".")
    return lines


# ---------------------------------------------------------------------------------------------------------- table
def format_novelty_table(summary: Mapping) -> str:
    """Markdown table: accuracy (count, mean, median, best, best by validation) and novelty medians per group."""
    nov = summary["novelty"]["groups"]
    rows = [(ORIGINAL, summary[ORIGINAL]), (GENERATED, summary[GENERATED])]
    rows += list(summary.get("baselines", {}).items())
    head = (
        "| group | count | mean | median | best | best (val) | NN dist | max-IoU | max agree | mean-model agree "
        "| good & novel |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, r in rows:
        d = nov[name]
        bv = r.get("best_by_val")
        lines.append(
            f"| {name} | {r['count']} | {r['mean']:.2f} | {r['median']:.2f} | {r['best']:.2f} | "
            f"{'-' if bv is None else f'{bv:.2f}'} | {d['nn_distance']['median']:.4g} | {d['max_iou']['median']:.3f} "
            f"| {d['max_agreement']['mean']:.3f} | {d['mean_model_agreement']['median']:.3f} "
            f"| {d['good_and_novel_fraction']:.0%} |"
        )
    return "\n".join(lines)
