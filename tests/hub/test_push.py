"""``pdiff_hf.hub.push``: ``save_pretrained`` folders and pushes, over real HTTP against ``hub_server.py``.

Two processes run against one server (see ``hub_client.py``):

* ``client``: pdiff_hf writes a folder with ``save_pretrained``, pushes with ``push_to_hub``, with
  ``save_pretrained(push_to_hub=True)`` and with the ``pdiff-hf push`` command, and tries the failing cases;
* ``remote``: stock diffusers with every ``pdiff_hf`` import blocked loads the saved folder and the pushed repo with
  ``trust_remote_code=True`` (it starts at once and waits for the client, so their imports overlap).
"""

import json
import secrets
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_client import (  # noqa: E402
    TIMEOUT,
    USER,
    Recorder,
    assert_token_never_leaks,
    block_pdiff_imports,
    error_of,
    hub_session,
    pdiff_modules,
    sample,
    step,
    tiny_pipeline,
)

REPO = f"{USER}/pdiff-tiny"
SAVED_REPO = f"{USER}/pdiff-saved"  # pushed with save_pretrained(push_to_hub=True)
DATASET_REPO = f"{USER}/tiny-checkpoints"  # not containing REPO: cards are compared up to the repo id
CLI_REPO = f"{USER}/pdiff-cli"
RESULTS = {
    "original": {"count": 24, "best": 91.25, "mean": 88.5, "median": 88.75, "min": 80.0, "std": 2.5},
    "generated": {"count": 10, "best": 92.5, "mean": 89.125, "median": 89.0, "min": 85.0, "std": 1.75},
    "baselines": {"noise-perturbed": {"count": 10, "best": 70.0, "mean": 60.0, "median": 61.0, "min": 40.0, "std": 9.0}},
    "novelty": {"max_similarity_to_original": 0.875, "mean_similarity_to_original": 0.7},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with hub_session(tmp_path_factory.mktemp("hub-push"), __file__, roles=("remote", "client")) as records:
        yield records


# ======================================================================================================= tests
def test_push_to_hub_uploads_weights_card_layout_and_code(run):
    push = step(run, "client", "push")
    assert push["commit_url"].endswith(push["oid"])
    files = set(push["repo_files"])
    assert {"model_index.json", "README.md", "param_layout.json", "pipeline_pdiff.py"} <= files
    assert {"autoencoder/diffusion_pytorch_model.safetensors", "denoiser/diffusion_pytorch_model.safetensors"} <= files
    assert {"autoencoder/pdiff_autoencoder.py", "denoiser/pdiff_denoiser.py", "scheduler/scheduler_config.json"} <= files
    assert "results.json" in files  # the raw statistics behind the card's summary
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)


def test_pushed_model_card(run):
    card = step(run, "client", "model_card")
    assert card["data"]["library_name"] == "diffusers"
    assert {"p-diff", "parameter-generation"} <= set(card["data"]["tags"])
    assert card["data"]["datasets"] == [DATASET_REPO] and card["data"]["license"] == "apache-2.0"
    for needle in [REPO, "D = 64", "| learning_rate | 0.001 |", "| p-diff generated | 10 | 92.50 |", DATASET_REPO,
                   f'PDiffPipeline.from_pretrained("{REPO}")', f'DiffusionPipeline.from_pretrained("{REPO}", trust_remote_code=True)']:
        assert needle in card["text"], needle
    assert "hub_token" not in card["text"] and run["token"] not in card["text"]


def test_save_pretrained_with_push_to_hub_gives_the_same_repo_and_card(run):
    saved = step(run, "client", "save_pretrained_push")
    assert saved["commit_url"].endswith(saved["oid"])
    assert saved["repo_files"] == saved["push_repo_files"]
    assert saved["same_bytes"] == sorted(f for f in saved["repo_files"] if f != "README.md")  # weights, configs, code
    assert saved["same_card"]  # README.md equal up to the repo id
    assert SAVED_REPO in saved["card"] and "| p-diff generated | 10 | 92.50 |" in saved["card"]
    assert saved["local_files"] == sorted(f for f in saved["repo_files"] if f != ".gitattributes")


def test_save_pretrained_folder_is_self_contained(run):
    folder = step(run, "client", "save_pretrained")
    assert folder["returned"] is None
    assert {"README.md", "param_layout.json", "pipeline_pdiff.py", "autoencoder/pdiff_autoencoder.py"} <= set(folder["files"])
    assert folder["class_name"] == ["pipeline_pdiff", "PDiffPipeline"]
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in folder["files"])
    assert 'PDiffPipeline.from_pretrained("path/to/this/folder")' in folder["card"]  # no repo id yet
    assert "None" not in folder["card"].split("## Usage")[1]


def test_stock_diffusers_loads_saved_folder_without_pdiff_hf(run):
    remote = step(run, "remote", "folder")
    client = step(run, "client", "save_pretrained")
    assert remote["pdiff_modules"] == [] and remote["blocked_imports"] == []
    assert remote["pipeline_module"].startswith("diffusers_modules.")
    assert remote["params"] == client["params"]  # identical samples


def test_stock_diffusers_loads_pushed_repo_without_pdiff_hf(run):
    remote = step(run, "remote", "repo")
    client = step(run, "client", "push")
    assert remote["pdiff_modules"] == [] and remote["blocked_imports"] == []
    assert remote["pipeline_module"].startswith("diffusers_modules.")
    assert remote["params"] == client["params"]
    assert remote["state_dict_keys"] == client["layout_names"]


def test_stock_loading_without_trust_remote_code_fails_clearly(run):
    remote = step(run, "remote", "no_flag")
    assert remote["error_type"] == "ValueError"
    assert "trust_remote_code=True" in remote["message"] and "pipeline_pdiff.py" in remote["message"]


def test_push_without_remote_code_replaces_the_code_of_an_earlier_push(run):
    plain = step(run, "client", "replace_code")
    assert any(f.endswith(".py") for f in plain["files_before"])
    assert not any(f.endswith(".py") for f in plain["files_after"])
    assert plain["class_name_after"] == "PDiffPipeline"


def test_hub_errors_propagate_with_their_own_types(run):
    errors = step(run, "client", "errors")
    assert "HfHubHTTPError" in errors["wrong_token"]["types"] and "401" in errors["wrong_token"]["message"]
    assert "HfHubHTTPError" in errors["forbidden_namespace"]["types"] and "403" in errors["forbidden_namespace"]["message"]
    for case in ("wrong_token", "forbidden_namespace"):
        assert run["token"] not in errors[case]["message"] and errors["wrong_token_value"] not in errors[case]["message"]


def test_own_checks_raise_hub_error(run):
    errors = step(run, "client", "errors")
    for case, needle in {
        "bad_repo_id": "owner/name",
        "variant": "variant",
        "push_without_repo_id": "repo_id",
    }.items():
        assert errors[case]["types"][0] == "HubError" and needle in errors[case]["message"], (case, errors[case])
        assert len(errors[case]["message"].splitlines()) == 1
    unsafe = step(run, "client", "unsafe_serialization")
    assert "autoencoder/diffusion_pytorch_model.safetensors" in unsafe["safetensors"] and unsafe["pickles"] == []


def test_push_command(run):
    cli = step(run, "client", "cli")
    assert cli["rc"] == 0, cli["stderr"]
    assert f"{USER}/pdiff-cli-checkpoints" in cli["stdout"] and CLI_REPO in cli["stdout"]
    assert cli["same_params"] and cli["dataset_same_params"]
    text = cli["card"]
    assert f"{USER}/pdiff-cli-checkpoints" in text and "| p-diff generated | 10 | 92.50 |" in text
    assert f'config_name="{cli["config_name"]}"' in text and cli["config_name"].startswith("tinymlp-d64-")
    assert "| Target architecture | TinyMLP(hidden=8) |" in text and "| Selection | last-2-norm |" in text
    assert "| epochs | 3 |" in text  # settings from results["config"]
    assert cli["results_json"]["timings_s"] == {"total": 1.5} and "hub_token" not in cli["results_json"]["config"]
    assert "timings_s" not in text and "results.json" in text  # raw statistics go to results.json, not the card
    assert cli["dataset_models"] == [CLI_REPO] and f"[`{CLI_REPO}`](" in cli["dataset_card"]  # the dataset links back
    assert run["token"] not in text and "hub_token" not in text
    assert cli["bad_rc"] == 2 and cli["bad_stderr"].count("\n") == 1 and "error:" in cli["bad_stderr"]


def test_token_never_leaks(run):
    assert_token_never_leaks(run)


def test_server_saw_real_client_traffic(run):
    seen = {(m, p.split("?")[0]) for m, p in run["server"].state.requests}
    assert ("POST", f"/api/models/{REPO}/preupload/main") in seen
    assert ("POST", f"/api/models/{REPO}/commit/main") in seen
    assert ("POST", f"/api/models/{SAVED_REPO}/commit/main") in seen
    assert any(p.startswith("/__lfs__/") for _, p in run["server"].state.requests)  # safetensors went by LFS
    assert run["seconds"] < TIMEOUT


def test_bundled_code_hides_pdiff_imports_from_diffusers_scan():
    from pdiff_hf.remote_code import _guard_import_scan, remote_code_files

    guarded = _guard_import_scan('def f():\n    """Example:\n\n        from pdiff_hf import hub\n    """\n')
    assert ">>> from pdiff_hf import hub" in guarded
    files = remote_code_files()
    assert sorted(files) == ["autoencoder/pdiff_autoencoder.py", "denoiser/pdiff_denoiser.py", "pipeline_pdiff.py"]
    # the Hub methods import pdiff_hf.hub, so they are left out and diffusers' own ones serve the remote class
    import ast

    tree = ast.parse(files["pipeline_pdiff.py"])
    pipeline = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PDiffPipeline")
    methods = {item.name for item in pipeline.body if isinstance(item, ast.FunctionDef)}
    assert "__call__" in methods and "check_inputs" in methods
    assert not methods & {"from_pretrained", "save_pretrained", "push_to_hub"}, methods


# ==================================================================================================== client side
def client_main(work: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from huggingface_hub import DatasetCard, HfApi, ModelCard, hf_hub_download

    import pdiff_hf
    from pdiff_hf import PDiffPipeline, checkpoint_params, make_checkpoint_dataset
    from pdiff_hf.hub import load_checkpoint_dataset_from_hub

    rec = Recorder(work / "client.json")
    token = __import__("os").environ["HF_TOKEN"]
    api = HfApi()
    pipe, net, layout = tiny_pipeline()
    ref = sample(pipe)
    training_args = {"learning_rate": 1e-3, "epochs": 3, "hub_token": token, "output_dir": str(work)}
    card_args = dict(checkpoint_dataset_id=DATASET_REPO, results=RESULTS, training_args=training_args, target_architecture=net)

    with rec.step("save_pretrained") as r:
        folder = work / "saved"
        returned = pipe.save_pretrained(folder)
        r.update(
            returned=returned,
            files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
            class_name=json.loads((folder / "model_index.json").read_text())["_class_name"],
            card=(folder / "README.md").read_text(),
            params=ref.tolist(),
        )

    with rec.step("push") as r:
        info = pipe.push_to_hub(REPO, **card_args)
        r.update(
            commit_url=info.commit_url,
            oid=info.oid,
            params=ref.tolist(),
            layout_names=[s.name for s in layout.specs],
            repo_files=api.list_repo_files(REPO),
        )
        (work / "pushed.flag").write_text(REPO)

    with rec.step("model_card") as r:
        card = ModelCard.load(REPO)
        r.update(data=card.data.to_dict(), text=card.text)

    with rec.step("save_pretrained_push") as r:
        folder = work / "saved-pushed"
        info = pipe.save_pretrained(folder, push_to_hub=True, repo_id=SAVED_REPO, **card_args)
        files = api.list_repo_files(SAVED_REPO)

        def content(repo, path):
            return Path(hf_hub_download(repo, path, cache_dir=work / "cmp-cache")).read_bytes()

        card = content(SAVED_REPO, "README.md").decode()
        r.update(
            commit_url=info.commit_url,
            oid=info.oid,
            repo_files=sorted(files),
            push_repo_files=sorted(api.list_repo_files(REPO)),
            same_bytes=sorted(f for f in files if f != "README.md" and content(SAVED_REPO, f) == content(REPO, f)),
            same_card=card == content(REPO, "README.md").decode().replace(REPO, SAVED_REPO),
            card=card,
            local_files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
        )

    with rec.step("replace_code") as r:
        repo = f"{USER}/pdiff-replace"
        pipe.push_to_hub(repo)
        before = api.list_repo_files(repo)
        pipe.push_to_hub(repo, remote_code=False)
        index = json.loads(Path(api.hf_hub_download(repo, "model_index.json", cache_dir=work / "cmp-cache")).read_text())
        r.update(files_before=before, files_after=api.list_repo_files(repo), class_name_after=index["_class_name"])

    with rec.step("errors") as r:
        wrong = "hf_" + secrets.token_hex(16)
        r.update(
            wrong_token=error_of(lambda: pipe.push_to_hub(f"{USER}/pdiff-wrong", token=wrong)),
            wrong_token_value=wrong,
            forbidden_namespace=error_of(lambda: pipe.push_to_hub("someone-else/pdiff", token=token)),
            bad_repo_id=error_of(lambda: pipe.push_to_hub("not a repo id!")),
            variant=error_of(lambda: pipe.push_to_hub(f"{USER}/pdiff-variant", variant="fp16")),
            push_without_repo_id=error_of(lambda: pipe.save_pretrained(work / "no-id", push_to_hub=True)),
        )

    with rec.step("unsafe_serialization") as r:  # diffusers' flag is accepted; safetensors are written anyway
        pipe.save_pretrained(work / "pickled", safe_serialization=False)
        r.update(
            safetensors=sorted(str(f.relative_to(work / "pickled")) for f in (work / "pickled").rglob("*.safetensors")),
            pickles=sorted(str(f) for f in (work / "pickled").rglob("*") if f.suffix in (".bin", ".pt", ".pkl")),
        )

    with rec.step("cli") as r:
        import contextlib
        import io

        from pdiff_hf import cli

        params = torch.randn(24, layout.dim, generator=torch.Generator().manual_seed(0))
        ds = make_checkpoint_dataset(params, layout, {"step": list(range(24))})
        folder = work / "run"
        pipe.save_pretrained(folder / "pipeline")
        ds.save_to_disk(str(folder / "checkpoints"))
        # a demo folder: results.json also records the run's settings and selection; target/ the target network
        demo_results = {**RESULTS, "config": training_args, "selection": {"name": "last-2-norm", "D": layout.dim}}
        (folder / "results.json").write_text(json.dumps({**demo_results, "timings_s": {"total": 1.5}}))
        (folder / "target").mkdir()
        (folder / "target" / "config.json").write_text(json.dumps({"_class_name": "TinyMLP", "_diffusers_version": "0", "hidden": 8}))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["push", str(folder), "--repo-id", CLI_REPO, "--max-shard-size", "1000"])
        bad_out, bad_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(bad_out), contextlib.redirect_stderr(bad_err):
            bad_rc = cli.main(["push", str(work / "missing"), "--repo-id", CLI_REPO])
        cli_ds = load_checkpoint_dataset_from_hub(f"{CLI_REPO}-checkpoints", cache_dir=work / "ds-cache")
        r.update(
            rc=rc,
            stdout=out.getvalue(),
            stderr=err.getvalue(),
            bad_rc=bad_rc,
            bad_stderr=bad_err.getvalue(),
            card=ModelCard.load(CLI_REPO).text,
            results_json=json.loads(Path(api.hf_hub_download(CLI_REPO, "results.json", cache_dir=work / "cmp-cache")).read_text()),
            dataset_card=DatasetCard.load(f"{CLI_REPO}-checkpoints").text,
            dataset_models=DatasetCard.load(f"{CLI_REPO}-checkpoints").data.to_dict().get("pdiff_models"),
            config_name=cli_ds.info.config_name,
            same_params=torch.equal(sample(PDiffPipeline.from_pretrained(CLI_REPO)), ref),
            dataset_same_params=torch.equal(checkpoint_params(cli_ds), params),
        )
    rec.save(finished=True, pdiff_hf_version=pdiff_hf.__version__)


def remote_main(work: Path) -> None:
    """Stock diffusers only: every pdiff_hf import is blocked and recorded."""
    blocked = block_pdiff_imports()
    rec = Recorder(work / "remote.json")

    import torch

    torch.set_num_threads(1)
    from diffusers import DiffusionPipeline

    deadline = time.time() + TIMEOUT - 30
    while not (work / "pushed.flag").exists():
        client = json.loads((work / "client.json").read_text()) if (work / "client.json").exists() else {}
        if time.time() > deadline or "error" in client.get("push", {}):
            rec.save(finished=True, waited="the client never pushed")
            return
        time.sleep(0.2)

    def load_and_sample(name_or_path):
        pipe = DiffusionPipeline.from_pretrained(name_or_path, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(num_models=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
        return {
            "pipeline_module": type(pipe).__module__,
            "params": out.params.tolist(),
            "state_dict_keys": list(out.state_dicts()[0].keys()),
            "pdiff_modules": pdiff_modules(),
            "blocked_imports": list(blocked),
        }

    with rec.step("no_flag") as r:
        try:
            DiffusionPipeline.from_pretrained(REPO)
            r.update(error_type=None, message="loaded without trust_remote_code")
        except Exception as err:
            r.update(error_type=type(err).__name__, message=str(err))

    with rec.step("folder") as r:
        r.update(load_and_sample(str(work / "saved")))

    with rec.step("repo") as r:
        r.update(load_and_sample(REPO))
    rec.save(finished=True)


if __name__ == "__main__":
    role, work = sys.argv[1], Path(sys.argv[2])
    if role == "client":
        client_main(work)
    elif role == "remote":
        remote_main(work)
    else:
        raise SystemExit(f"unknown role {role!r}")
