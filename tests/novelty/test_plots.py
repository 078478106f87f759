"""pdiff_hf.novelty.plots: figures from plain arrays, written atomically."""

import pytest
import torch

from pdiff_hf.novelty import plots


def test_plot_functions_take_plain_arrays(tmp_path):
    p = plots.plot_accuracy_distribution([70.0, 71.5, 72.0], torch.tensor([69.0, 73.0]), tmp_path / "a.png",
                                         others={"gaussian": [60.0, 61.0]})
    q = plots.plot_nn_distance_histograms({"original": [0.5, 0.6], "noise_0.01": [0.01, 0.011], "generated": [2.0]},
                                          tmp_path / "sub" / "h.png")
    r = plots.plot_accuracy_vs_novelty({"original": ([0.9, 0.8], [70.0, 71.0]), "generated": ([0.5], [69.0])},
                                       tmp_path / "s.png", good_threshold=69.5, novel_threshold=0.7)
    for path in (p, q, r):
        assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError):
        plots.plot_accuracy_vs_novelty({"generated": ([0.5, 0.4], [69.0])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_group_styles_are_fixed_per_kind():
    styles = plots.group_styles(["original", "generated", "noise_0.1", "noise_0.01", "average_k16", "gaussian", "x"])
    assert styles["generated"]["marker"] == "*" and styles["average_k16"]["marker"] == "s"
    assert styles["noise_0.01"]["color"] != styles["noise_0.1"]["color"]
    assert styles["x"]["marker"] == "v"
