"""Plots of evaluation and novelty results (matplotlib, Agg backend, PNG written atomically).

Every function takes result arrays (tensors, NumPy arrays or lists) and an output path, draws on its own
``Figure`` with an Agg canvas (no pyplot, no global backend switch, safe in threads and headless runs), writes the
PNG to a temporary file next to ``path`` and moves it into place with ``os.replace``, and returns ``path``.

Group names follow :mod:`pdiff_hf.novelty`: ``original``, ``generated``, ``noise_<amplitude>``, ``average_k<k>``,
``gaussian``, ``pca_gaussian``, ``resampled`` (and ``heldout`` / ``training`` of the held-out generalization test);
each gets a fixed colour and marker so that all plots of a report read the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.io_utils import atomic_file

if TYPE_CHECKING:
    import torch

ArrayLike = Union[Sequence[float], np.ndarray, "torch.Tensor"]

LABELS = {
    "original": "original checkpoints",
    "generated": "p-diff generated",
    "heldout": "held-out checkpoints",
    "training": "training checkpoints",
}
_BASE_STYLE = {
    "original": {"color": "0.45", "marker": "o"},
    "generated": {"color": "tab:red", "marker": "*"},
    "average": {"color": "tab:green", "marker": "s"},
    "gaussian": {"color": "tab:purple", "marker": "D"},
    "heldout": {"color": "tab:orange", "marker": "P"},
    "training": {"color": "0.45", "marker": "o"},
    "pca_gaussian": {"color": "tab:olive", "marker": "h"},
    "resampled": {"color": "tab:brown", "marker": "X"},
}
_NOISE_COLORS = ("#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b")


def _array(values: ArrayLike) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _noise_amplitude(name: str) -> Optional[float]:
    if name.startswith("noise_"):
        try:
            return float(name[len("noise_") :])
        except ValueError:
            return None
    return None


def group_styles(names: Sequence[str]) -> Dict[str, Dict]:
    """Colour and marker per group name; noise levels get darker blues as the amplitude grows."""
    noise = sorted((a, n) for n in names if (a := _noise_amplitude(n)) is not None)
    styles = {}
    for i, (_, n) in enumerate(noise):
        color = _NOISE_COLORS[min(len(_NOISE_COLORS) - 1, i + max(0, len(_NOISE_COLORS) - len(noise)))]
        styles[n] = {"color": color, "marker": "^"}
    fallback = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    extra = 0
    for n in names:
        if n in styles:
            continue
        key = "average" if n.startswith("average") else n
        if key in _BASE_STYLE:
            styles[n] = dict(_BASE_STYLE[key])
        else:
            styles[n] = {"color": fallback[extra % len(fallback)], "marker": "v"}
            extra += 1
    return styles


def _label(name: str, count: int) -> str:
    return f"{LABELS.get(name, name)} (n={count})"


def save_figure(fig: Figure, path: Union[str, Path], dpi: int = 130) -> Path:
    """Render ``fig`` with Agg and write it as PNG to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _draw_order(names: Sequence[str]) -> list:
    """Baselines first, then originals, generated models on top."""
    return [n for n in names if n not in ("original", "generated")] + [n for n in ("original", "generated") if n in names]


def plot_accuracy_vs_novelty(
    points: Mapping[str, Tuple[ArrayLike, ArrayLike]],
    path: Union[str, Path],
    good_threshold: Optional[float] = None,
    novel_threshold: Optional[float] = None,
    title: str = "Accuracy vs novelty: generated models, originals and baselines",
) -> Path:
    """Scatter of test accuracy against max-IoU (error-set similarity to the closest training checkpoint).

    Args:
        points: ``{group name: (max_iou, test_accuracy)}``, arrays of equal length per group.
        good_threshold: draw the "good" accuracy threshold (horizontal line).
        novel_threshold: draw the "novel" max-IoU threshold (vertical line); the good-and-novel corner is shaded.
    """
    fig = Figure(figsize=(8.0, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    styles = group_styles(list(points))
    all_x, all_y = [], []
    for name in _draw_order(list(points)):
        x, y = _array(points[name][0]), _array(points[name][1])
        if x.shape != y.shape:
            raise ValueError(f"{name}: expected as many max-IoU values as accuracies, found {x.size} and {y.size}")
        all_x.append(x)
        all_y.append(y)
        st = styles[name]
        main = name in ("original", "generated")
        ax.scatter(
            x,
            y,
            s=60 if name == "generated" else (22 if main else 16),
            c=st["color"],
            marker=st["marker"],
            alpha=0.9 if name == "generated" else (0.6 if main else 0.45),
            edgecolors="black" if name == "generated" else "none",
            linewidths=0.4,
            label=_label(name, x.size),
            zorder=3 if name == "generated" else (2 if main else 1),
        )
    xs, ys = np.concatenate(all_x) if all_x else np.zeros(1), np.concatenate(all_y) if all_y else np.zeros(1)
    if good_threshold is not None:
        ax.axhline(good_threshold, color="black", ls="--", lw=1, label=f"good: acc >= {good_threshold:.2f}%")
    if novel_threshold is not None:
        ax.axvline(novel_threshold, color="black", ls=":", lw=1.2, label=f"novel: max-IoU < {novel_threshold:.3f}")
    if good_threshold is not None and novel_threshold is not None:
        y_top = max(float(ys.max()), good_threshold) + 0.5
        x_left = min(float(xs.min()), novel_threshold) - 0.02
        ax.fill_between([x_left, novel_threshold], good_threshold, y_top, color="gold", alpha=0.12, zorder=0,
                        label="good and novel")
    ax.set_xlabel("max-IoU of test errors with any training checkpoint  (lower = more novel)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, markerscale=1.4)
    return save_figure(fig, path)


def plot_nn_distance_histograms(
    distances: Mapping[str, ArrayLike],
    path: Union[str, Path],
    title: str = "Distance to the nearest training checkpoint",
    xlabel: str = "RMS distance in normalized space to the nearest training checkpoint",
) -> Path:
    """Overlaid step histograms (fraction of each group's models) of nearest-neighbour distances. The x axis is
    logarithmic when the positive distances span more than two decades (e.g. small-noise baselines next to
    originals)."""
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    styles = group_styles(list(distances))
    arrays = {n: _array(v) for n, v in distances.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] or [np.zeros(1)])
    positive = finite[finite > 0]
    log = positive.size > 0 and positive.max() / positive.min() > 100
    if log:
        lo, hi = positive.min() / 1.2, positive.max() * 1.2
        bins = np.logspace(math.log10(lo), math.log10(hi), 50)
        ax.set_xscale("log")
    else:
        lo, hi = float(finite.min()), float(finite.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
    for name in _draw_order(list(arrays)):
        a = arrays[name]
        a = a[np.isfinite(a)]
        if log:
            a = np.clip(a, bins[0], None)
        if a.size == 0:
            continue
        main = name in ("original", "generated")
        ax.hist(
            a,
            bins=bins,
            weights=np.full(a.size, 1.0 / a.size),
            histtype="stepfilled" if main else "step",
            alpha=0.35 if main else 0.95,
            lw=2.0 if main else 1.3,
            color=styles[name]["color"],
            edgecolor=styles[name]["color"],
            label=f"{_label(name, a.size)}, median {np.median(a):.3g}",
        )
    ax.set_xlabel(xlabel + ("  (log scale)" if log else ""))
    ax.set_ylabel("fraction of models")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_accuracy_distribution(
    original: ArrayLike,
    generated: ArrayLike,
    path: Union[str, Path],
    others: Optional[Mapping[str, ArrayLike]] = None,
    title: str = "Test accuracy: original checkpoints vs generated models",
) -> Path:
    """Histograms (fraction of models) of the test accuracies of the original checkpoints and the generated models,
    with their means marked; ``others`` adds step histograms of more groups (e.g. baselines)."""
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    groups = {"original": _array(original), "generated": _array(generated)}
    for name, values in (others or {}).items():
        groups[name] = _array(values)
    styles = group_styles(list(groups))
    everything = np.concatenate([g for g in groups.values() if g.size] or [np.zeros(1)])
    lo, hi = float(everything.min()), float(everything.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    for name in [n for n in groups if n not in ("original", "generated")] + ["original", "generated"]:
        a = groups[name]
        if a.size == 0:
            continue
        main = name in ("original", "generated")
        color = styles[name]["color"]
        ax.hist(
            a,
            bins=bins,
            weights=np.full(a.size, 1.0 / a.size),
            histtype="stepfilled" if main else "step",
            alpha=0.45 if main else 0.95,
            color=color,
            edgecolor=color,
            lw=1.5,
            label=f"{_label(name, a.size)}: mean {a.mean():.2f}% ± {a.std():.2f}",
        )
        if main:
            ax.axvline(a.mean(), color=color, ls="--", lw=1.5)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("fraction of models")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def plot_energy_distances(
    energies: Mapping[str, Optional[float]],
    null: ArrayLike,
    threshold: float,
    path: Union[str, Path],
    title: str = "Two-sample distance to the held-out checkpoints",
) -> Path:
    """The deciding comparison of the held-out generalization test: the permutation null of the energy distance
    (held-out vs training checkpoints of the same collection) as a histogram, its threshold (dashed), and each
    group's energy distance to the held-out checkpoints as a vertical line (``None`` values are skipped).

    Args:
        energies: ``{group name: energy distance}`` (``generated``, ``training``, baselines).
        null: the null distribution's values; ``threshold``: its 95th percentile.
    """
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    values = _array(null)
    finite = {k: float(v) for k, v in energies.items() if v is not None and math.isfinite(float(v))}
    styles = group_styles(list(finite))
    ax.hist(values, bins=40, color="0.75", edgecolor="0.6", weights=np.full(values.size, 1.0 / max(values.size, 1)),
            label=f"null: held-out vs training (n={values.size})")
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold (95th percentile) {threshold:.3g}")
    for name in _draw_order(list(finite)):
        main = name in ("generated", "training")
        ax.axvline(finite[name], color=styles[name]["color"], lw=3.0 if name == "generated" else (2.0 if main else 1.3),
                   ls="-" if main else ":", label=f"{LABELS.get(name, name)}: {finite[name]:.3g}")
    ax.set_xlabel("energy distance to the held-out checkpoints (PCA coordinates, normalized units)")
    ax.set_ylabel("fraction of permutations")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_pca_view(
    points: Mapping[str, ArrayLike],
    path: Union[str, Path],
    title: str = "Training, held-out and generated vectors (first two principal components of the training ones)",
) -> Path:
    """Scatter of ``{group name: (n, 2)}`` coordinates, e.g. training, held-out and generated vectors projected on
    the training checkpoints' first two principal directions; training first, generated on top."""
    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    arrays = {}
    for name, v in points.items():
        a = (v.detach().cpu().double().numpy() if hasattr(v, "detach") else np.asarray(v, dtype=np.float64))
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected (n, 2) coordinates, found shape {a.shape}")
        arrays[name] = a
    styles = group_styles(list(arrays))
    order = [n for n in ("training",) if n in arrays] + [n for n in _draw_order(list(arrays)) if n != "training"]
    for z, name in enumerate(order):
        a = arrays[name]
        ax.scatter(a[:, 0], a[:, 1], s=50 if name == "generated" else 22, c=styles[name]["color"],
                   marker=styles[name]["marker"], alpha=0.85 if name != "training" else 0.45,
                   edgecolors="black" if name in ("generated", "heldout") else "none", linewidths=0.4,
                   label=_label(name, a.shape[0]), zorder=z + 1)
    ax.set_xlabel("PC 1 (rms units)")
    ax.set_ylabel("PC 2 (rms units)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
