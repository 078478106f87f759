"""Reports: the :class:`NoveltyReport` returned by the analysis, its markdown tables, and the one writer of a run's
output folder (:func:`write_report`), shared by :func:`pdiff_hf.demos.demo.run_demo` and ``pdiff-hf evaluate``.

A report folder holds ``plots/*.png``, ``report.md`` and ``results.json``, each written atomically, ``results.json``
last: a folder without it is incomplete. ``report.md`` has the same sections whoever writes it: a title and a few
lines on the run, ``Original vs generated`` (accuracy table), the caller's own sections, the novelty section (table,
verdict, definitions, plots) and the timings.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import PDiffError
from ..utils.io_utils import write_json_atomic, write_text_atomic
from .types import GroupMetrics
from .verdict import DEFINITIONS, GENERATED, ORIGINAL

if TYPE_CHECKING:  # plots (matplotlib) load on first use
    from .plots import ArrayLike

PLOTS_DIR = "plots"
SKIPPED_NOVELTY = "Novelty analysis skipped (--no-novelty)."


# --------------------------------------------------------------------------------------------------- the report
@dataclass
class NoveltyReport:
    """Output of :func:`~pdiff_hf.novelty.analyze_novelty`.

    Attributes:
        groups: ``original``, ``generated`` then the baselines, each a :class:`~pdiff_hf.novelty.GroupMetrics`.
        summary: the JSON-serializable summary (``original``, ``generated``, ``baselines``, ``novelty``,
            ``verdict``); :meth:`to_dict` returns a copy.
        verdict: plain-text verdict lines (:func:`~pdiff_hf.novelty.novelty_verdict`).
    """

    groups: Dict[str, "GroupMetrics"]
    summary: Dict
    verdict: List[str]

    @property
    def original(self) -> "GroupMetrics":
        return self.groups[ORIGINAL]

    @property
    def generated(self) -> "GroupMetrics":
        return self.groups[GENERATED]

    @property
    def baselines(self) -> Dict[str, "GroupMetrics"]:
        return {k: v for k, v in self.groups.items() if k not in (ORIGINAL, GENERATED)}

    @property
    def thresholds(self) -> Dict:
        return self.summary["novelty"]["thresholds"]

    def to_dict(self) -> Dict:
        """``{"original", "generated", "baselines", "novelty", "verdict"}``: plain floats, ints, strings, lists."""
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
        intervals = nov.get("intervals")
        if intervals:
            lines += ["", "### Uncertainty of the verdict", "", format_intervals_table(intervals)]
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
            lines += [f"![{name}]({_relative(path, relative_to)})" for name, path in plot_paths.items()]
        return "\n".join(lines) + "\n"


def _relative(path: Union[str, Path], root: Optional[Union[str, Path]]) -> str:
    p = Path(path)
    if root is not None:
        try:
            p = p.relative_to(root)
        except ValueError:
            pass
    return p.as_posix()


# ------------------------------------------------------------------------------------------------------- tables
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


_OUTCOME_WORDS = {"below": "below: decides", "above": "above: decides", "straddles": "straddles: INCONCLUSIVE"}


def format_intervals_table(intervals: Mapping) -> str:
    """Markdown table of the verdict's decisive comparisons (``novelty.intervals``): value on all models, bootstrap
    interval, threshold and whether the interval lies on one side of it."""
    first = next(iter(intervals.values()))
    lines = [
        f"{first['confidence']:.0%} bootstrap intervals ({first['resamples']} resamples of each group's models, "
        "medians recomputed); a comparison decides only when its interval lies on one side of the threshold.",
        "",
        "| comparison | statistic | value | interval | threshold | outcome |",
        "|" + "---|" * 6,
    ]

    def num(x) -> str:
        return "inf" if x is None else f"{x:.4g}"

    for key, e in intervals.items():
        lines.append(
            f"| {key} | {e['statistic']} | {num(e['value'])} | [{num(e['low'])}, {num(e['high'])}] | "
            f"{e['threshold']:g} | {_OUTCOME_WORDS.get(e['outcome'], e['outcome'])} |"
        )
    return "\n".join(lines)


def format_accuracy_table(results: Mapping) -> str:
    """The paper-style table: original vs generated (and baselines) best / mean / median / min test accuracy (%)."""
    rows = [("original", results[ORIGINAL]), ("p-diff", results[GENERATED])]
    rows += [(f"baseline {name}", r) for name, r in results.get("baselines", {}).items()]
    lines = [f"| {'models':<22} | {'count':>5} | {'best':>6} | {'mean':>6} | {'median':>6} | {'min':>6} |", "|" + "---|" * 6]
    for name, r in rows:
        lines.append(
            f"| {name:<22} | {r['count']:>5} | {r['best']:>6.2f} | {r['mean']:>6.2f} | {r['median']:>6.2f} | {r['min']:>6.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- writer
def format_report(
    results: Mapping,
    novelty_md: str,
    title: str,
    intro: Sequence[str] = (),
    sections: Optional[Mapping[str, Sequence[str]]] = None,
) -> str:
    """``report.md``: ``# title``, the intro lines, ``## Original vs generated``, one ``## heading`` per entry of
    ``sections``, the novelty section ``novelty_md``, and ``## Timings (s)`` when ``results`` has ``timings_s``."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [*intro, ""]
    lines += ["## Original vs generated", "", format_accuracy_table(results), ""]
    for heading, body in (sections or {}).items():
        lines += [f"## {heading}", "", *body, ""]
    lines.append(novelty_md)
    timings = results.get("timings_s")
    if timings:
        lines += ["## Timings (s)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(
    output_dir: Union[str, Path],
    results: Dict,
    title: str,
    intro: Sequence[str] = (),
    sections: Optional[Mapping[str, Sequence[str]]] = None,
    novelty: Optional[NoveltyReport] = None,
    test_accuracies: Optional[Tuple["ArrayLike", "ArrayLike"]] = None,
    started: Optional[float] = None,
) -> Dict[str, Path]:
    """Write a run's report folder: ``plots/*.png``, ``report.md``, then ``results.json`` (each atomically; an old
    ``results.json`` is removed first, so the folder reads as incomplete until the new one is in place).

    Args:
        output_dir: the folder (created if needed).
        results: the content of ``results.json``, with ``original`` and ``generated`` accuracy summaries (and the
            novelty summary, ``NoveltyReport.to_dict()``, when there is one). Updated in place: ``plots`` (``{plot
            name: path relative to output_dir}``) and, with ``started``, ``timings_s["report"]`` and
            ``timings_s["total"]``.
        title, intro, sections: the report's title, lines under it, and extra ``{heading: lines}`` sections placed
            after the accuracy table (see :func:`format_report`).
        novelty: the novelty analysis; its plots and markdown section go into the report. Without it the section
            says the analysis was skipped and ``test_accuracies`` (original, generated), if given, are plotted.
        started: ``time.perf_counter()`` at the start of the run; the writer then times itself and the whole run.

    Returns:
        ``{plot name: path}`` of the plots written.
    """
    for key in (ORIGINAL, GENERATED):
        if not isinstance(results.get(key), Mapping):
            raise PDiffError(f"expected results[{key!r}] to be an accuracy summary, found {results.get(key)!r}")
    t0 = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if results_path.exists():
        results_path.unlink()
    plots_dir = out / PLOTS_DIR
    if novelty is not None:
        plot_paths = novelty.save_plots(plots_dir)
        novelty_md = novelty.markdown(plot_paths, relative_to=out)
    else:
        plot_paths = {}
        if test_accuracies is not None:
            from .plots import plot_accuracy_distribution

            original, generated = test_accuracies
            path = plot_accuracy_distribution(original, generated, plots_dir / "accuracy_distribution.png")
            plot_paths["accuracy_distribution"] = path
        novelty_md = "\n".join([SKIPPED_NOVELTY, ""] + [f"![{k}]({_relative(p, out)})" for k, p in plot_paths.items()])
        novelty_md = novelty_md.rstrip("\n") + "\n"
    results["plots"] = {name: _relative(path, out) for name, path in plot_paths.items()}
    if started is not None:
        timings = results.setdefault("timings_s", {})
        timings["report"] = round(time.perf_counter() - t0, 3)
        timings.pop("total", None)
        timings["total"] = round(time.perf_counter() - started, 3)
    write_text_atomic(out / "report.md", format_report(results, novelty_md, title, intro, sections))
    write_json_atomic(results_path, results)
    return plot_paths
