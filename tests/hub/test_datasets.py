"""``pdiff_hf.hub.datasets``: checkpoint datasets on the Hub, over real HTTP against ``hub_server.py``.

A ``client`` process (this file run as a script, see ``hub_client.py``) pushes checkpoint datasets in parquet shards,
two configs into one repo, loads them back with ``load_checkpoint_dataset_from_hub`` and with stock
``datasets.load_dataset``, and records what failing loads raise.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_client import (  # noqa: E402
    USER,
    Recorder,
    assert_token_never_leaks,
    error_of,
    hub_session,
    step,
)

DATASET_REPO = f"{USER}/pdiff-tiny-checkpoints"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with hub_session(tmp_path_factory.mktemp("hub-datasets"), __file__) as records:
        yield records


def test_default_config_name_is_stable():
    from pdiff_hf import ParamLayout
    from pdiff_hf.hub import default_config_name

    layout = ParamLayout.from_list([{"name": "0.weight", "shape": [4, 2], "dtype": "float32", "kind": "parameter"}])
    name = default_config_name(layout, "MLP(hidden=8)")
    assert name.startswith("mlp-d8-") and name == default_config_name(ParamLayout.from_list(layout.to_list()), "MLP")


def test_round_trip_in_parquet_shards(run):
    ds = step(run, "client", "dataset")
    assert ds["num_shards"] >= 3, ds["data_files"]
    assert all(f.endswith(".parquet") for f in ds["data_files"])
    assert ds["layout_file"] in ds["repo_files"]
    assert ds["same_params"] and ds["same_layout"] and ds["same_metadata"]
    assert ds["feature"] == "List(Value('float32'), length=22)"


def test_stock_datasets_loads_the_same_rows(run):
    assert step(run, "client", "dataset")["stock_same_params"]


def test_second_selection_goes_to_its_own_config(run):
    ds = step(run, "client", "dataset")
    assert ds["second_config_same_params"] and ds["second_config_same_layout"]
    assert len(set(ds["config_names"])) == 2


def test_dataset_card_lists_every_config(run):
    ds = step(run, "client", "dataset")
    card = ds["card"]
    assert {"p-diff", "parameter-generation", "model-checkpoints"} <= set(card["data"]["tags"])
    # the configs datasets wrote into the card metadata survive the card rewrite
    assert sorted(c["config_name"] for c in card["data"]["configs"]) == sorted(ds["config_names"])
    for name in ds["config_names"]:
        assert f"`{name}`" in card["text"]
    assert "toy-mlp" in card["text"] and "toy-mlp head" in card["text"]


def test_own_checks_raise_clear_errors(run):
    errors = step(run, "client", "errors")
    for case, (error_type, needles) in {
        "ambiguous_config": ("HubError", ["pass config_name"]),
        "unknown_config": ("HubError", ["no-such-config", "configs with a layout"]),
        "not_pushed_by_pdiff": ("HubError", [f"{USER}/plain-data", "no parameter layout"]),
        "pickled_dataset": ("HubError", [f"{USER}/pickled", "data/train-0.pkl", "parquet only"]),
        "layout_mismatch": ("LayoutMismatchError", [DATASET_REPO]),
        "bad_repo_id": ("HubError", ["owner/name"]),
    }.items():
        assert errors[case]["types"][0] == error_type, (case, errors[case])
        for needle in needles:
            assert needle in errors[case]["message"], (case, errors[case]["message"])


def test_conditional_dataset_keeps_its_condition_names_and_the_card_lists_them(run):
    cond = step(run, "client", "conditional")
    assert cond["same_params"] and cond["same_conditions"]
    assert cond["condition_names"] == ["shift-0", "shift-1", "shift-2"]
    assert cond["document"]["condition_names"] == cond["condition_names"]
    assert cond["document"]["condition_column"] == "condition"
    assert "column `condition` holds the task id" in cond["card"]
    assert "0 = `shift-0`, 1 = `shift-1`, 2 = `shift-2`" in cond["card"]
    assert cond["bad_ids"]["types"][0] == "ConditionError" and "[0, 3)" in cond["bad_ids"]["message"]


def test_unconditional_datasets_are_unchanged(run):
    ds = step(run, "client", "dataset")
    cond = step(run, "client", "conditional")
    assert cond["unconditional_document_keys"] == sorted(
        ["config_name", "architecture", "dim", "num_tensors", "num_checkpoints", "splits", "columns", "param_layout",
         "pdiff_hf_version"]
    )  # fmt: skip
    assert cond["unconditional_names"] is None
    assert "Conditional" not in ds["card"]["text"]


def test_hub_errors_propagate_with_their_own_types(run):
    errors = step(run, "client", "errors")
    assert "RepositoryNotFoundError" in errors["missing_repo"]["types"]
    assert f"{USER}/does-not-exist" in errors["missing_repo"]["message"]
    assert "RevisionNotFoundError" in errors["missing_revision"]["types"]


def test_token_never_leaks(run):
    assert_token_never_leaks(run)
    assert any(p.startswith(f"/api/datasets/{DATASET_REPO}/tree/") for _, p in run["server"].state.requests)


# ==================================================================================================== client side
def client_main(work: Path) -> None:
    import datasets
    import numpy as np
    import torch
    from huggingface_hub import DatasetCard, HfApi
    from torch import nn

    torch.set_num_threads(1)
    import pdiff_hf
    from pdiff_hf import (
        ParamLayout,
        checkpoint_params,
        get_layout,
        make_checkpoint_dataset,
    )
    from pdiff_hf.hub import load_checkpoint_dataset_from_hub, push_checkpoint_dataset

    rec = Recorder(work / "client.json")
    api = HfApi()
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.LayerNorm(3))
    layout = ParamLayout.from_module(net, last_norm_layers=2)
    params = torch.randn(24, layout.dim, generator=torch.Generator().manual_seed(0))

    with rec.step("dataset") as r:
        meta = {"run_id": [i // 12 for i in range(24)], "step": list(range(24)), "val_accuracy": [80.0 + i / 4 for i in range(24)]}
        info = push_checkpoint_dataset(make_checkpoint_dataset(params, layout, meta), DATASET_REPO, max_shard_size=1000, architecture="toy-mlp")
        files = api.list_repo_files(DATASET_REPO, repo_type="dataset")
        back = load_checkpoint_dataset_from_hub(DATASET_REPO, info.config_name, cache_dir=work / "ds-cache")
        stock = datasets.load_dataset(DATASET_REPO, info.config_name, split="train", cache_dir=work / "ds-cache-stock")
        stock_params = torch.from_numpy(np.asarray(stock.with_format("numpy")["params"], dtype=np.float32))
        # a second architecture / selection goes to its own config of the same repo
        layout2 = ParamLayout.from_module(net, include="3.*")
        params2 = torch.randn(10, layout2.dim)
        info2 = push_checkpoint_dataset(make_checkpoint_dataset(params2, layout2), DATASET_REPO, architecture="toy-mlp head")
        back2 = load_checkpoint_dataset_from_hub(DATASET_REPO, config_name=info2.config_name)
        card = DatasetCard.load(DATASET_REPO, repo_type="dataset")
        r.update(
            num_shards=len([f for f in files if f.startswith(info.config_name + "/")]),
            data_files=[f for f in files if f.startswith(info.config_name + "/")],
            repo_files=files,
            layout_file=f"param_layouts/{info.config_name}.json",
            same_params=torch.equal(checkpoint_params(back), params),
            same_layout=get_layout(back) == layout,
            same_metadata=all(back[k] == v for k, v in meta.items()),
            stock_same_params=torch.equal(stock_params, params),
            feature=repr(back.features["params"]),
            second_config_same_params=torch.equal(checkpoint_params(back2), params2),
            second_config_same_layout=get_layout(back2) == layout2,
            config_names=[info.config_name, info2.config_name],
            card={"data": card.data.to_dict(), "text": card.text},
        )

    with rec.step("conditional") as r:
        from huggingface_hub import hf_hub_download

        from pdiff_hf.checkpoints.dataset import (
            checkpoint_conditions,
            get_condition_names,
        )

        repo = f"{USER}/pdiff-tiny-conditional"
        conditions = torch.arange(3).repeat_interleave(4)
        names = ["shift-0", "shift-1", "shift-2"]
        cond_ds = make_checkpoint_dataset(params[:12], layout, {"condition": conditions.tolist()}, condition_names=names)
        cinfo = push_checkpoint_dataset(cond_ds, repo, architecture="toy-mlp")
        cback = load_checkpoint_dataset_from_hub(repo, cinfo.config_name, cache_dir=work / "cond-cache")
        doc = json.loads(Path(hf_hub_download(repo, f"param_layouts/{cinfo.config_name}.json", repo_type="dataset")).read_text())
        first = rec.data["dataset"]["config_names"][0]
        plain_doc = json.loads(Path(hf_hub_download(DATASET_REPO, f"param_layouts/{first}.json", repo_type="dataset")).read_text())
        plain = load_checkpoint_dataset_from_hub(DATASET_REPO, first, cache_dir=work / "ds-cache")
        bad = make_checkpoint_dataset(params[:4], layout, {"condition": [0, 1, 2, 3]})
        bad.info.description = json.dumps({**json.loads(bad.info.description), "pdiff_hf.condition_names": names})
        r.update(
            same_params=torch.equal(checkpoint_params(cback), params[:12]),
            same_conditions=torch.equal(checkpoint_conditions(cback), conditions),
            condition_names=get_condition_names(cback),
            document=doc,
            card=DatasetCard.load(repo, repo_type="dataset").text,
            unconditional_document_keys=sorted(plain_doc),
            unconditional_names=get_condition_names(plain),
            bad_ids=error_of(lambda: push_checkpoint_dataset(bad, repo, "bad")),
        )

    with rec.step("errors") as r:
        api.create_repo(f"{USER}/pickled", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"\x80\x04K\x01.", path_in_repo="data/train-0.pkl", repo_id=f"{USER}/pickled", repo_type="dataset")
        api.upload_file(path_or_fileobj=json.dumps({"param_layout": layout.to_list()}).encode(), path_in_repo="param_layouts/x.json", repo_id=f"{USER}/pickled", repo_type="dataset")
        api.create_repo(f"{USER}/plain-data", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.txt", repo_id=f"{USER}/plain-data", repo_type="dataset")
        config = rec.data["dataset"]["config_names"][0]
        r.update(
            ambiguous_config=error_of(lambda: load_checkpoint_dataset_from_hub(DATASET_REPO)),
            unknown_config=error_of(lambda: load_checkpoint_dataset_from_hub(DATASET_REPO, "no-such-config")),
            not_pushed_by_pdiff=error_of(lambda: load_checkpoint_dataset_from_hub(f"{USER}/plain-data")),
            pickled_dataset=error_of(lambda: load_checkpoint_dataset_from_hub(f"{USER}/pickled", "x")),
            layout_mismatch=error_of(lambda: load_checkpoint_dataset_from_hub(DATASET_REPO, config, target_module=nn.Linear(8, 3))),
            bad_repo_id=error_of(lambda: load_checkpoint_dataset_from_hub("not a repo id!")),
            missing_repo=error_of(lambda: load_checkpoint_dataset_from_hub(f"{USER}/does-not-exist")),
            missing_revision=error_of(lambda: load_checkpoint_dataset_from_hub(DATASET_REPO, config, revision="no-such-branch")),
        )
    rec.save(finished=True, pdiff_hf_version=pdiff_hf.__version__)


if __name__ == "__main__":
    role, work = sys.argv[1], Path(sys.argv[2])
    if role != "client":
        raise SystemExit(f"unknown role {role!r}")
    client_main(work)
