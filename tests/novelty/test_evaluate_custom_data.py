"""pdiff-hf evaluate on your own network and data: --data (a DatasetDict folder) instead of a built-in --task, the
target's class read from its config.json."""

import datasets
import pytest
import torch

from pdiff_hf import ParamLayout, PDiffConfig, cli, fit_pdiff, make_checkpoint_dataset
from pdiff_hf.tasks import MNIST1DCNN


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=4).eval()
    layout = ParamLayout.from_module(model, last_norm_layers=2)
    params = layout.flatten(model) + 0.02 * torch.randn(30, layout.dim, generator=torch.Generator().manual_seed(0))
    make_checkpoint_dataset(params, layout, {"step": list(range(30))}).save_to_disk(str(root / "checkpoints"))
    model.save_pretrained(str(root / "target"))
    config = PDiffConfig(ae_steps=2, denoiser_steps=2, lr_warmup_steps=0, ae_linear_latent_length=2)
    fit_pdiff(params, layout, config, progress=False).save_pretrained(str(root / "pipeline"))
    g = torch.Generator().manual_seed(1)
    splits = {}
    for name, n in (("train", 40), ("validation", 20), ("test", 30)):
        splits[name] = datasets.Dataset.from_dict(
            {"input": torch.randn(n, 1, 40, generator=g).tolist(), "label": torch.randint(0, 10, (n,), generator=g).tolist()}
        )
    datasets.DatasetDict(splits).save_to_disk(str(root / "data"))
    return root


def _argv(root, *extra):
    return ["evaluate", "--pipeline", str(root / "pipeline"), "--checkpoints", str(root / "checkpoints"),
            "--target", str(root / "target"), "--num-models", "4", "--noise-levels", "0.01", *extra]  # fmt: skip


def test_custom_network_and_data(folders, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(_argv(folders, "--data", str(folders / "data"), "--output-dir", str(out))) == 0
    import json

    results = json.loads((out / "results.json").read_text())
    assert results["data"] == str(folders / "data") and results["task"] is None
    assert results["generated"]["count"] == 4


def test_bad_data_is_one_line_before_any_weights(folders, tmp_path, capsys):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input": [[0.0]], "label": [0]})}).save_to_disk(
        str(tmp_path / "only_train")
    )
    capsys.readouterr()  # the save's progress bar
    assert cli.main(_argv(folders, "--data", str(tmp_path / "only_train"))) == 2
    err = capsys.readouterr().err
    assert "expected a split named validation or val" in err and err.count("\n") == 1
    assert cli.main(_argv(folders, "--data", str(folders / "data"), "--label-column", "y")) == 2
    assert "expected columns ['y']" in capsys.readouterr().err
