"""Existing checkpoints in: state dicts and checkpoint files become a checkpoint dataset; bad files are named."""

import pytest
import torch
from safetensors.torch import save_file

from pdiff_hf import ParamLayout, checkpoint_params, get_layout
from pdiff_hf.checkpoint_import import checkpoints_from_files, checkpoints_from_state_dicts, load_state_dict_file
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
