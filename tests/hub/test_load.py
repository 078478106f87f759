"""``pdiff_hf.hub.load``: ``PDiffPipeline.from_pretrained`` from local folders and Hub repos, the same safe way.

Local folders are tested in this process. Hub repos are tested over real HTTP against ``hub_server.py`` by a
``client`` process (this file run as a script, see ``hub_client.py``) that pushes, loads revisions, and records what
failing loads raise: huggingface_hub's own errors for what the Hub says, ``HubError`` for pdiff_hf's own checks.
"""

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_client import (  # noqa: E402
    USER,
    Recorder,
    assert_token_never_leaks,
    error_of,
    hub_session,
    sample,
    step,
    tiny_pipeline,
)

REPO = f"{USER}/pdiff-tiny"
PLANTED_REPO = f"{USER}/pdiff-planted"
MARKER = "executed.marker"  # written by the planted code or pickle if anything ever runs it


class _WritesMarker:
    """Unpickling this writes the marker file: a pickle that must never be loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('unpickled')",))


def plant_unsafe_files(folder: Path, marker: Path, class_name: str = "ParameterAutoencoder") -> None:
    """Add to a saved pipeline folder what a hostile repo could hold: pickled weights next to the safetensors, and
    a ``model_index.json`` naming ``.py`` modules (at the root and in a component folder) that write ``marker`` when
    imported."""
    code = f"open({str(marker)!r}, 'w').write('imported')\n"
    (folder / "evil_pipeline.py").write_text(code + "class PDiffPipeline:\n    pass\n")
    (folder / "autoencoder" / "evil_module.py").write_text(code + f"class {class_name}:\n    pass\n")
    for name in ("autoencoder", "denoiser"):
        (folder / name / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(str(marker))))
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["evil_pipeline", "PDiffPipeline"]
    index["autoencoder"] = ["evil_module", class_name]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def saved_dir(tiny_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    tiny_pipeline.save_pretrained(path)
    return path


# ======================================================================================================= local folders
def test_local_folder_round_trip_with_pdiff_classes(tiny_pipeline, saved_dir):
    from pdiff_hf import PDiffPipeline

    loaded = PDiffPipeline.from_pretrained(saved_dir)
    assert [type(c).__module__.split(".")[0] for c in (loaded.autoencoder, loaded.denoiser)] == ["pdiff_hf", "pdiff_hf"]
    assert torch.equal(sample(loaded), sample(tiny_pipeline)) and loaded.layout == tiny_pipeline.layout


def test_local_folder_never_imports_code_or_unpickles(tiny_pipeline, saved_dir, tmp_path):
    from pdiff_hf import PDiffPipeline

    folder, marker = tmp_path / "planted", tmp_path / MARKER
    shutil.copytree(saved_dir, folder)
    plant_unsafe_files(folder, marker)
    loaded = PDiffPipeline.from_pretrained(folder)  # the .py are ignored, the safetensors are used
    assert not marker.exists()
    assert type(loaded).__module__ == "pdiff_hf.pipelines.pipeline_pdiff"
    assert torch.equal(sample(loaded), sample(tiny_pipeline))
    assert not marker.exists()


def test_local_folder_with_only_pickled_weights_is_refused(saved_dir, tmp_path):
    from pdiff_hf import HubError, PDiffPipeline

    folder, marker = tmp_path / "pickles", tmp_path / MARKER
    shutil.copytree(saved_dir, folder)
    plant_unsafe_files(folder, marker)
    (folder / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(HubError, match=r"denoiser/\*\.safetensors \(found only pickle weights") as info:
        PDiffPipeline.from_pretrained(folder)
    assert str(folder) in str(info.value)
    assert not marker.exists()


def test_local_folder_naming_a_foreign_class_is_refused(saved_dir, tmp_path):
    from pdiff_hf import HubError, PDiffPipeline

    folder, marker = tmp_path / "foreign", tmp_path / MARKER
    shutil.copytree(saved_dir, folder)
    plant_unsafe_files(folder, marker, class_name="EvilModel")
    with pytest.raises(HubError, match="expected component autoencoder to be a ParameterAutoencoder, found EvilModel"):
        PDiffPipeline.from_pretrained(folder)
    assert not marker.exists()


def test_component_override_and_bad_arguments(tiny_pipeline, saved_dir, tmp_path):
    from diffusers import DDIMScheduler

    from pdiff_hf import HubError, PDiffPipeline

    ddim = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    assert isinstance(PDiffPipeline.from_pretrained(saved_dir, scheduler=ddim).scheduler, DDIMScheduler)
    with pytest.raises(TypeError, match="unexpected keyword arguments.*'low_cpu_mem'"):
        PDiffPipeline.from_pretrained(saved_dir, low_cpu_mem=True)
    with pytest.raises(HubError, match="use_safetensors"):
        PDiffPipeline.from_pretrained(saved_dir, use_safetensors=False)
    with pytest.raises(HubError, match="found no folder"):
        PDiffPipeline.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(HubError, match="lacks model_index.json"):
        PDiffPipeline.from_pretrained(tmp_path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {  # case -> (change to a saved folder, text the HubError must contain)
    "index_not_json": (lambda d: (d / "model_index.json").write_text("{not json"), "expected model_index.json to be"),
    "index_a_list": (lambda d: (d / "model_index.json").write_text("[1, 2]"), "model_index.json to hold a JSON object"),
    "truncated_weights": (
        lambda d: _truncate(d / "denoiser" / "diffusion_pytorch_model.safetensors"),
        "expected denoiser/diffusion_pytorch_model.safetensors to be a complete safetensors file",
    ),
    "random_weights": (
        lambda d: (d / "denoiser" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 4),
        "expected denoiser/diffusion_pytorch_model.safetensors to be a complete safetensors file, found 1024 bytes",
    ),
    "config_missing": (lambda d: (d / "denoiser" / "config.json").unlink(), "missing denoiser/config.json"),
    "config_not_json": (lambda d: (d / "denoiser" / "config.json").write_text("{"), "expected denoiser/config.json"),
    "scheduler_missing": (lambda d: shutil.rmtree(d / "scheduler"), "missing scheduler/scheduler_config.json"),
    "scheduler_bad_value": (
        lambda d: (d / "scheduler" / "scheduler_config.json").write_text('{"beta_schedule": "nope"}'),
        "expected scheduler/scheduler_config.json to configure a DPMSolverMultistepScheduler, found values it rejects",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_local_folder_is_a_hub_error_naming_the_file(saved_dir, tmp_path, monkeypatch, case):
    """Every file is checked, and the scheduler built, before any model is built: a broken denoiser or scheduler
    file fails before the autoencoder is loaded (a patched ``from_pretrained`` that fails would show otherwise)."""
    from pdiff_hf import HubError, ParameterAutoencoder, PDiffPipeline

    folder = tmp_path / case
    shutil.copytree(saved_dir, folder)
    corrupt, needle = CORRUPTIONS[case]
    corrupt(folder)

    def built_too_early(*args, **kwargs):
        raise AssertionError("the autoencoder was built before the folder was checked")

    monkeypatch.setattr(ParameterAutoencoder, "from_pretrained", built_too_early)
    with pytest.raises(HubError) as info:
        PDiffPipeline.from_pretrained(folder)
    assert needle in str(info.value) and str(folder) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


# ======================================================================================================= Hub repos
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with hub_session(tmp_path_factory.mktemp("hub-load"), __file__) as records:
        yield records


def test_hub_repo_loads_with_pdiff_classes_from_json_and_safetensors_only(run):
    load = step(run, "client", "load")
    assert load["pipeline_class"] == "PDiffPipeline"
    assert load["component_classes"] == ["ParameterAutoencoder", "LatentUNet1DModel", "DPMSolverMultistepScheduler"]
    assert all(m.startswith("pdiff_hf.") for m in load["component_modules"][:2])  # not the uploaded code
    assert load["same_params"] and load["same_layout"]
    assert any(f.endswith(".py") for f in load["repo_files"])
    assert load["downloaded_files"] and not any(f.endswith((".py", ".bin")) for f in load["downloaded_files"])


def test_hub_repo_with_planted_code_and_pickles(run):
    planted = step(run, "client", "planted")
    assert planted["same_params"] and not planted["marker_exists"]
    assert {"evil_pipeline.py", "autoencoder/diffusion_pytorch_model.bin"} <= set(planted["repo_files"])
    assert not any(f.endswith((".py", ".bin")) for f in planted["downloaded_files"])


def test_revisions_branch_tag_commit_and_offline_cache(run):
    rev = step(run, "client", "revisions")
    assert rev["main_is_v1"] and rev["tag_v1_is_v1"] and rev["sha_is_v1"] and rev["dev_is_v2"]
    assert not rev["v1_equals_v2"]  # the two pushes differ, so the checks above mean something
    assert rev["cached_offline_is_v1"]


def test_plain_diffusers_repo_without_remote_code(run):
    plain = step(run, "client", "plain_repo")
    assert plain["class_name"] == "PDiffPipeline" and plain["same_params"]
    assert not any(f.endswith(".py") for f in plain["files"])


def test_hub_errors_propagate_with_their_own_types(run):
    errors = step(run, "client", "errors")
    for case, (error_type, needles) in {
        "missing_repo": ("RepositoryNotFoundError", [f"{USER}/does-not-exist"]),
        "missing_revision": ("RevisionNotFoundError", ["no-such-branch"]),
        "connection_refused": ("LocalEntryNotFoundError", ["Connection refused"]),
        "not_cached_offline": ("LocalEntryNotFoundError", ["local_files_only"]),
    }.items():
        assert error_type in errors[case]["types"], (case, errors[case])
        assert "HubError" not in errors[case]["types"], case
        for needle in needles:
            assert needle in errors[case]["message"], (case, errors[case]["message"])
        assert run["token"] not in errors[case]["message"], case


def test_own_checks_raise_clear_errors(run):
    errors = step(run, "client", "errors")
    for case, (error_type, needles) in {
        "missing_component": ("HubError", [f"{USER}/broken", "denoiser"]),
        "layout_mismatch": ("LayoutMismatchError", [REPO, "target module"]),
        "bad_repo_id": ("HubError", ["owner/name"]),
    }.items():
        assert errors[case]["types"][0] == error_type, (case, errors[case])
        for needle in needles:
            assert needle in errors[case]["message"], (case, errors[case]["message"])
        assert len(errors[case]["message"].splitlines()) <= 2, case


def test_token_never_leaks(run):
    assert_token_never_leaks(run)


# ==================================================================================================== client side
def client_main(work: Path, dead_port: int) -> None:
    torch.set_num_threads(1)
    from huggingface_hub import HfApi
    from torch import nn

    import pdiff_hf
    from pdiff_hf import PDiffPipeline
    from pdiff_hf.hub import save_for_hub

    rec = Recorder(work / "client.json")
    api = HfApi()
    cache = work / "cache"
    pipe, _, layout = tiny_pipeline()
    ref = sample(pipe)

    def downloaded(repo_id):  # every file of every snapshot of the repo in the cache
        snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        return sorted({str(p.relative_to(s)) for s in snapshots.iterdir() for p in s.rglob("*") if p.is_file()})

    with rec.step("load") as r:
        pipe.push_to_hub(REPO)
        loaded = PDiffPipeline.from_pretrained(REPO, cache_dir=cache)
        comps = [loaded.autoencoder, loaded.denoiser, loaded.scheduler]
        r.update(
            pipeline_class=type(loaded).__name__,
            component_classes=[type(c).__name__ for c in comps],
            component_modules=[type(c).__module__ for c in comps],
            same_params=torch.equal(sample(loaded), ref),
            same_layout=loaded.layout == layout,
            repo_files=api.list_repo_files(REPO),
            downloaded_files=downloaded(REPO),
        )

    with rec.step("planted") as r:
        folder, marker = work / "planted", work / MARKER
        save_for_hub(pipe, folder, repo_id=PLANTED_REPO)
        plant_unsafe_files(folder, marker)
        api.create_repo(PLANTED_REPO)
        api.upload_folder(repo_id=PLANTED_REPO, folder_path=folder)
        shutil.rmtree(folder)
        r.update(
            same_params=torch.equal(sample(PDiffPipeline.from_pretrained(PLANTED_REPO, cache_dir=cache)), ref),
            marker_exists=marker.exists(),
            repo_files=api.list_repo_files(PLANTED_REPO),
            downloaded_files=downloaded(PLANTED_REPO),
        )

    with rec.step("revisions") as r:
        v1 = api.model_info(REPO).sha
        api.create_tag(REPO, tag="v1")
        pipe_b, _, _ = tiny_pipeline(seed=1)
        ref_b = sample(pipe_b)
        pipe_b.push_to_hub(REPO, revision="dev", commit_message="v2 on a branch")

        def same(revision, expected, **kw):
            return torch.equal(sample(PDiffPipeline.from_pretrained(REPO, revision=revision, cache_dir=cache, **kw)), expected)

        r.update(
            main_is_v1=same(None, ref),
            tag_v1_is_v1=same("v1", ref),
            sha_is_v1=same(v1, ref),
            dev_is_v2=same("dev", ref_b),
            v1_equals_v2=torch.equal(ref, ref_b),
            cached_offline_is_v1=same(None, ref, local_files_only=True),
        )

    with rec.step("plain_repo") as r:  # without the remote-code files: plain diffusers format, pdiff_hf classes
        pipe.push_to_hub(f"{USER}/pdiff-plain", remote_code=False)
        index = json.loads(Path(api.hf_hub_download(f"{USER}/pdiff-plain", "model_index.json")).read_text())
        r.update(
            files=api.list_repo_files(f"{USER}/pdiff-plain"),
            class_name=index["_class_name"],
            same_params=torch.equal(sample(PDiffPipeline.from_pretrained(f"{USER}/pdiff-plain")), ref),
        )

    with rec.step("errors") as r:
        broken = work / "broken"
        save_for_hub(pipe, broken, repo_id=f"{USER}/broken")
        shutil.rmtree(broken / "denoiser")
        api.create_repo(f"{USER}/broken")
        api.upload_folder(repo_id=f"{USER}/broken", folder_path=broken)
        r.update(
            missing_repo=error_of(lambda: PDiffPipeline.from_pretrained(f"{USER}/does-not-exist", cache_dir=cache)),
            missing_revision=error_of(lambda: PDiffPipeline.from_pretrained(REPO, revision="no-such-branch", cache_dir=cache)),
            missing_component=error_of(lambda: PDiffPipeline.from_pretrained(f"{USER}/broken", cache_dir=cache)),
            layout_mismatch=error_of(lambda: PDiffPipeline.from_pretrained(REPO, cache_dir=cache, target_module=nn.Linear(2, 2))),
            connection_refused=error_of(
                lambda: PDiffPipeline.from_pretrained(REPO, cache_dir=work / "cache-dead", endpoint=f"http://127.0.0.1:{dead_port}")
            ),
            not_cached_offline=error_of(lambda: PDiffPipeline.from_pretrained(f"{USER}/never", cache_dir=cache, local_files_only=True)),
            bad_repo_id=error_of(lambda: PDiffPipeline.from_pretrained("not a repo id!")),
        )
    rec.save(finished=True, pdiff_hf_version=pdiff_hf.__version__)


if __name__ == "__main__":
    role, work = sys.argv[1], Path(sys.argv[2])
    if role != "client":
        raise SystemExit(f"unknown role {role!r}")
    client_main(work, int(sys.argv[3]))
