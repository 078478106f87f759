"""Existing checkpoints in: state dicts, checkpoint files and Hub model repos (over HTTP against ``tests/hub/hub_server.py``)
become a checkpoint dataset; bad files and repos are named."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pdiff_hf import ParamLayout, checkpoint_params, get_layout
from pdiff_hf.checkpoints.import_checkpoints import (
    checkpoints_from_files,
    checkpoints_from_hub,
    checkpoints_from_state_dicts,
    load_state_dict_file,
)
from pdiff_hf.errors import CheckpointFileError


def _states(bn_mlp_factory, n=3):
    return [bn_mlp_factory(seed=s).state_dict() for s in range(n)]


def test_from_state_dicts(bn_mlp_factory):
    layout = ParamLayout.from_module(bn_mlp_factory(), last_norm_layers=2, include_buffers=True)
    states = _states(bn_mlp_factory)
    ds = checkpoints_from_state_dicts(iter(states), layout, metadata={"run_id": [0, 0, 1]})
    assert get_layout(ds) == layout and ds["index"] == [0, 1, 2] and ds["run_id"] == [0, 0, 1]
    assert torch.equal(checkpoint_params(ds), torch.stack([layout.flatten(s) for s in states]))
    bad = dict(states[0])
    bad["4.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointFileError, match=r"state dict 1:.*4\.weight: expected \[8\], found \[5\]"):
        checkpoints_from_state_dicts([states[0], bad], layout)
    partial = {k: v for k, v in states[0].items() if not k.startswith("4.")}
    with pytest.raises(CheckpointFileError, match=r"missing \['4\.weight'"):
        checkpoints_from_state_dicts([partial], layout)


def test_from_a_folder_of_files(bn_mlp_factory, tmp_path):
    layout = ParamLayout.from_module(bn_mlp_factory(), last_norm_layers=2, include_buffers=True)
    states = _states(bn_mlp_factory)
    (tmp_path / "run1").mkdir()
    save_file({k: v.contiguous() for k, v in states[0].items()}, str(tmp_path / "a.safetensors"))
    save_file({k: v.contiguous() for k, v in states[1].items()}, str(tmp_path / "run1" / "b.safetensors"))
    torch.save({"state_dict": states[2]}, tmp_path / "c.pt")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = checkpoints_from_files(tmp_path, layout)
    assert ds["file"] == ["a.safetensors", "c.pt", "run1/b.safetensors"]
    expected = torch.stack([layout.flatten(states[i]) for i in (0, 2, 1)])
    assert torch.equal(checkpoint_params(ds), expected)


class Payload:
    """An arbitrary object: torch.load(weights_only=True) refuses to unpickle it."""


def test_bad_files_are_named(bn_mlp_factory, tmp_path):
    torch.save({"weights": Payload()}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointFileError, match=r"pickle\.pt: expected tensors that torch.load\(weights_only=True\)"):
        load_state_dict_file(tmp_path / "pickle.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointFileError, match="broken.safetensors: expected a complete safetensors file"):
        load_state_dict_file(tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointFileError, match=r"expected a checkpoint file ending in .*found '\.txt'"):
        load_state_dict_file(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    layout = ParamLayout.from_module(bn_mlp_factory(), last_norm_layers=1)
    with pytest.raises(CheckpointFileError, match=r"expected checkpoint files \(.*\), found none"):
        checkpoints_from_files(tmp_path / "empty", layout)
    with pytest.raises(CheckpointFileError, match="found no file at"):
        checkpoints_from_files([tmp_path / "missing.safetensors"], layout)


# ================================================================================== Hub model repos (local server)
# The client runs this file as a script against tests/hub/hub_server.py (see tests/hub/hub_client.py).
HUB_TESTS = Path(__file__).resolve().parents[1] / "hub"


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    sys.path.insert(0, str(HUB_TESTS))
    from hub_client import hub_session

    with hub_session(tmp_path_factory.mktemp("hub-checkpoints"), __file__) as records:
        yield records


def test_from_hub_repos(hub_run):
    sys.path.insert(0, str(HUB_TESTS))
    from hub_client import USER, step

    read = step(hub_run, "client", "read")
    assert read["repo_id"] == [f"{USER}/run-0", f"{USER}/run-1-sharded", f"{USER}/run-0"]
    assert read["params_equal"] == [True, True, True]  # run-0@main, both shards, run-0@v1 (the older weights)
    assert read["revision"][0] == read["main_commit"] and read["revision"][2] == read["v1_commit"]
    assert read["names_equal"] and read["subfolder_equal"]
    # only safetensors and JSON files travelled: the pickle next to the weights was never downloaded
    downloaded = [p for m, p in hub_run["server"].state.requests if m == "GET" and "/resolve/" in p]
    assert downloaded and not any(p.endswith((".bin", ".txt")) for p in downloaded)
    assert any(p.endswith(".safetensors") for p in downloaded)


def test_from_hub_bad_repos_are_named(hub_run):
    sys.path.insert(0, str(HUB_TESTS))
    from hub_client import USER, step

    errors = step(hub_run, "client", "errors")
    assert errors["pickles_only"]["types"][0] == "CheckpointFileError"
    assert f"Hub repo {USER}/pickles-only: expected .safetensors weights at the repo root" in errors["pickles_only"]["message"]
    assert errors["wrong_shape"]["types"][0] == "CheckpointFileError"
    assert f"{USER}/wrong-shape" in errors["wrong_shape"]["message"] and "expected [8], found [5]" in errors["wrong_shape"]["message"]
    assert "RepositoryNotFoundError" in errors["missing_repo"]["types"]
    assert errors["revisions"]["types"][0] == "CheckpointFileError"


def hub_client_main(work: Path) -> None:
    import json
    import tempfile

    from hub_client import USER, Recorder, error_of, shared_conftest
    from huggingface_hub import HfApi

    torch.set_num_threads(1)
    rec = Recorder(work / "client.json")
    api = HfApi()
    make = shared_conftest().make_bn_mlp
    layout = ParamLayout.from_module(make(), last_norm_layers=2, include_buffers=True)
    states = [{k: v.contiguous() for k, v in make(seed=s).state_dict().items()} for s in range(4)]

    def push(repo, files, revision=None):
        api.create_repo(repo, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for rel, content in files.items():
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, dict):
                    save_file(content, str(path))
                elif isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    torch.save(content[0], path)  # a pickle, never to be downloaded
            return api.upload_folder(repo_id=repo, folder_path=tmp, revision=revision).oid

    with rec.step("read") as r:
        v1 = push(f"{USER}/run-0", {"model.safetensors": states[3], "config.json": b'{"model_type": "mlp"}'})
        api.create_tag(f"{USER}/run-0", tag="v1")
        main = push(f"{USER}/run-0", {"model.safetensors": states[0], "pytorch_model.bin": (states[0],), "notes.txt": b"x"})
        half = list(states[1])[: len(states[1]) // 2]
        index = {"weight_map": {k: "model-00001-of-00002.safetensors" if k in half else "model-00002-of-00002.safetensors" for k in states[1]}}
        push(f"{USER}/run-1-sharded", {
            "model-00001-of-00002.safetensors": {k: v for k, v in states[1].items() if k in half},
            "model-00002-of-00002.safetensors": {k: v for k, v in states[1].items() if k not in half},
            "model.safetensors.index.json": json.dumps(index).encode(),
            "checkpoint-5/model.safetensors": states[2],
        })  # fmt: skip
        repos = [f"{USER}/run-0", f"{USER}/run-1-sharded", f"{USER}/run-0"]
        ds = checkpoints_from_hub(repos, layout, revision=[None, None, "v1"], cache_dir=work / "cache")
        expected = [layout.flatten(states[i]) for i in (0, 1, 3)]
        params = checkpoint_params(ds)
        sub = checkpoints_from_hub(f"{USER}/run-1-sharded", layout, subfolder="checkpoint-5", cache_dir=work / "cache")
        r.update(
            repo_id=list(ds["repo_id"]),
            revision=list(ds["revision"]),
            main_commit=main,
            v1_commit=v1,
            params_equal=[torch.equal(params[i], expected[i]) for i in range(3)],
            names_equal=get_layout(ds) == layout,
            subfolder_equal=torch.equal(checkpoint_params(sub)[0], layout.flatten(states[2])),
        )

    with rec.step("errors") as r:
        push(f"{USER}/pickles-only", {"pytorch_model.bin": (states[0],), "config.json": b"{}"})
        bad = dict(states[0])
        bad["4.weight"] = torch.zeros(5)
        push(f"{USER}/wrong-shape", {"model.safetensors": bad})
        r.update(
            pickles_only=error_of(lambda: checkpoints_from_hub(f"{USER}/pickles-only", layout, cache_dir=work / "cache")),
            wrong_shape=error_of(lambda: checkpoints_from_hub(f"{USER}/wrong-shape", layout, cache_dir=work / "cache")),
            missing_repo=error_of(lambda: checkpoints_from_hub(f"{USER}/nope", layout, cache_dir=work / "cache")),
            revisions=error_of(lambda: checkpoints_from_hub([f"{USER}/run-0"], layout, revision=["a", "b"])),
        )
    rec.save(finished=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HUB_TESTS))
    hub_client_main(Path(sys.argv[2]))
