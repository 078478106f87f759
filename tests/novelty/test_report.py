"""pdiff_hf.novelty.report: NoveltyReport's plots and markdown, and write_report, the one writer of report folders
(``pdiff-hf demo`` and ``pdiff-hf evaluate`` both go through it: see tests/test_demo.py and test_evaluate_command.py).
"""

import json
import time

import pytest

from pdiff_hf import PDiffError
from pdiff_hf.evaluation.batched import summarize_accuracies
from pdiff_hf.novelty import format_accuracy_table, write_report
from pdiff_hf.novelty import report as report_module

from .helpers import PLOTS, files, headings


def test_plots_are_written_atomically(novel_report, tmp_path):
    paths = novel_report.save_plots(tmp_path)
    assert set(paths) == PLOTS
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left
    md = novel_report.markdown(paths, relative_to=tmp_path)
    assert "![accuracy_vs_novelty](accuracy_vs_novelty.png)" in md and "Verdict:" in md


def test_write_report_writes_plots_report_then_results(novel_report, tmp_path):
    out = tmp_path / "run"
    results = {"command": "test", **novel_report.to_dict(), "timings_s": {"analyze": 1.25}}
    started = time.perf_counter()
    plot_paths = write_report(out, results, title="A title", intro=["- one", "- two"],
                              sections={"Extra": ["- extra line"]}, novelty=novel_report, started=started)
    assert files(out) == ["plots/accuracy_distribution.png", "plots/accuracy_vs_novelty.png",
                          "plots/nn_distance_hist.png", "report.md", "results.json"]  # no temporary files
    assert set(plot_paths) == PLOTS
    saved = json.loads((out / "results.json").read_text())
    assert saved == results  # results are completed in place
    assert saved["plots"] == {k: f"plots/{k}.png" for k in plot_paths}
    assert list(saved["timings_s"]) == ["analyze", "report", "total"] and saved["timings_s"]["total"] >= saved["timings_s"]["report"]
    newest = max((out / p).stat().st_mtime_ns for p in files(out) if p != "results.json")
    assert (out / "results.json").stat().st_mtime_ns >= newest

    md = (out / "report.md").read_text()
    assert md.startswith("# A title\n\n- one\n- two\n\n## Original vs generated\n")
    assert headings(md) == ["Original vs generated", "Extra", "Novelty against simple baselines", "Timings (s)"]
    assert headings(md, "### ") == ["Verdict", "Uncertainty of the verdict", "Definitions and thresholds", "Plots"]
    assert format_accuracy_table(results) in md and novel_report.table() in md
    for name in PLOTS:
        assert f"![{name}](plots/{name}.png)" in md
    assert md.endswith("| total | " + f"{saved['timings_s']['total']:.1f} |\n")


def test_write_report_without_novelty(tmp_path):
    results = {"original": summarize_accuracies([70.0, 71.0, 72.0]), "generated": summarize_accuracies([71.0, 71.5])}
    write_report(tmp_path, results, title="No novelty", test_accuracies=([70.0, 71.0, 72.0], [71.0, 71.5]))
    assert files(tmp_path) == ["plots/accuracy_distribution.png", "report.md", "results.json"]
    md = (tmp_path / "report.md").read_text()
    assert headings(md) == ["Original vs generated"]  # no timings recorded, none reported
    assert report_module.SKIPPED_NOVELTY in md and "![accuracy_distribution](plots/accuracy_distribution.png)" in md
    assert json.loads((tmp_path / "results.json").read_text())["plots"] == {
        "accuracy_distribution": "plots/accuracy_distribution.png"
    }


def test_write_report_replaces_an_old_run_and_fails_cleanly(novel_report, tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text('{"old": true}')
    (tmp_path / "report.md").write_text("old report")

    def broken_plots(self, output_dir, prefix=""):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module.NoveltyReport, "save_plots", broken_plots)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(tmp_path, novel_report.to_dict(), title="t", novelty=novel_report)
    assert not (tmp_path / "results.json").exists()  # an incomplete folder reads as incomplete
    assert (tmp_path / "report.md").read_text() == "old report"
    with pytest.raises(PDiffError, match="expected results\\['generated'\\]"):
        write_report(tmp_path, {"original": {}}, title="t")
