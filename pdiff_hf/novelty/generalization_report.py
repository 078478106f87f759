"""The held-out generalization test's vocabulary and output: the verdict words and bands, the comparisons and the
rules that decide (:func:`generalization_verdict`, a function of the JSON summary alone), the result
(:class:`GeneralizationResult`) and its summary lines, table and markdown. The test itself is
:mod:`pdiff_hf.novelty.generalization`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import GeneralizationTestError

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
        runs = " runs, whole runs held out" if entry.get("null_holds_out") == "whole runs" else ""
        return (
            f"energy distance to held-out {_fmt(entry['value'])} {rel} {_fmt(entry['threshold'])}, the null's "
            f"{NULL_QUANTILE:.0%} quantile (held-out vs training{runs}, {entry['permutations']} permutations; "
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
