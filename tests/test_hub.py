"""Hub round trips over real HTTP against the local Hub-compatible server of ``tests/hub_server.py``.

huggingface_hub and datasets read ``HF_ENDPOINT`` when they are imported, so the client side runs in subprocesses
(this file run as a script) with ``HF_ENDPOINT`` pointing at the server, ``HF_HUB_DISABLE_XET=1``, a throwaway
``HF_HOME`` and a throwaway ``HF_TOKEN``:

* ``client``: pdiff_hf pushes and loads pipelines, cards, checkpoint datasets, revisions, the ``push`` command and the
  error cases, and records what it saw in ``client.json``;
* ``remote``: stock diffusers, with every ``pdiff_hf`` import blocked, loads the pushed repo with and without
  ``trust_remote_code=True`` (it starts at once and waits for the first push, so its imports overlap the client's).

The tests below check those records, the server's request log and every byte the server stored.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hub_server import HubServer  # noqa: E402

USER = "tester"
REPO = f"{USER}/pdiff-tiny"
DATASET_REPO = f"{USER}/pdiff-tiny-checkpoints"
CLI_REPO = f"{USER}/pdiff-cli"
RESULTS = {
    "original": {"count": 24, "best": 91.25, "mean": 88.5, "median": 88.75, "min": 80.0, "std": 2.5},
    "generated": {"count": 10, "best": 92.5, "mean": 89.125, "median": 89.0, "min": 85.0, "std": 1.75},
    "baselines": {"noise-perturbed": {"count": 10, "best": 70.0, "mean": 60.0, "median": 61.0, "min": 40.0, "std": 9.0}},
    "novelty": {"max_similarity_to_original": 0.875, "mean_similarity_to_original": 0.7},
}
SAMPLE = dict(num_models=3, num_inference_steps=5)
TIMEOUT = 420


# ==================================================================================================== pytest side
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(hub_url: str, home: Path, token: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "DIFFUSERS_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_TOKEN=token,
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Start the server, run both client processes, return their records, logs and the server."""
    token = "hf_" + secrets.token_hex(16)
    work = tmp_path_factory.mktemp("hub")
    server = HubServer({token: USER}).start()
    start = time.time()
    try:
        procs = {}
        for role in ("remote", "client"):
            log = open(work / f"{role}.log", "w")
            procs[role] = (
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), role, str(work), str(_free_port())],
                    env=_env(server.url, work / f"home-{role}", token),
                    cwd=str(work),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        for role, (proc, log) in procs.items():
            try:
                proc.wait(timeout=max(1, TIMEOUT - (time.time() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        logs = {role: (work / f"{role}.log").read_text() for role in procs}
        records = {}
        for role in procs:
            path = work / f"{role}.json"
            records[role] = json.loads(path.read_text()) if path.exists() else {}
            if not records[role].get("finished"):
                pytest.fail(f"the {role} process did not finish (rc={procs[role][0].returncode}):\n{logs[role][-6000:]}")
        yield {"token": token, "server": server, "logs": logs, "seconds": time.time() - start, **records}
    finally:
        server.stop()


def _step(run, role, name):
    record = run[role].get(name)
    assert record is not None, f"{role} did not run step {name}"
    assert "error" not in record, f"{role} step {name} failed:\n{record['error']}"
    return record


def test_helpers(run):
    units = _step(run, "client", "units")
    assert run["token"] not in units["redacted"] and "abc" not in units["redacted"]
    assert units["sanitized"] == {"lr": 0.1, "nested.depth": 2, "note": "token ***"}
    assert ">>> from pdiff_hf import hub" in units["guarded"]
    assert units["config_name"] == units["config_name_again"] and units["config_name"].startswith("mlp-d22-")
    assert units["remote_files"] == ["autoencoder/pdiff_autoencoder.py", "denoiser/pdiff_denoiser.py", "pipeline_pdiff.py"]


def test_pipeline_push_and_load_samples_identical_params(run):
    push = _step(run, "client", "push_pipeline")
    assert push["commit_url"].endswith(push["oid"])
    load = _step(run, "client", "load_pipeline")
    assert load["pipeline_class"] == "PDiffPipeline"
    assert load["component_classes"] == ["ParameterAutoencoder", "LatentUNet1DModel", "DPMSolverMultistepScheduler"]
    assert load["component_modules"][0].startswith("pdiff_hf.")  # pdiff_hf classes, not the uploaded code
    assert load["same_params"] and load["same_layout"]
    files = set(load["repo_files"])
    assert {"model_index.json", "README.md", "param_layout.json", "pipeline_pdiff.py"} <= files
    assert {"autoencoder/diffusion_pytorch_model.safetensors", "denoiser/diffusion_pytorch_model.safetensors"} <= files
    assert {"autoencoder/pdiff_autoencoder.py", "denoiser/pdiff_denoiser.py", "scheduler/scheduler_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)
    # the download fetched configs and safetensors only: no code, no pickles
    assert load["downloaded_files"] and not any(f.endswith(".py") for f in load["downloaded_files"])


def test_model_card_metadata_and_contents(run):
    card = _step(run, "client", "model_card")
    data = card["data"]
    assert data["library_name"] == "diffusers"
    assert {"p-diff", "parameter-generation"} <= set(data["tags"])
    assert data["datasets"] == [DATASET_REPO]
    assert data["license"] == "apache-2.0"
    text = card["text"]
    for needle in [
        REPO,
        "D = 22",
        "`1.weight` | [8]",
        "`4.bias` | [3]",
        "Sequential",  # target architecture
        DATASET_REPO,
        "| learning_rate | 0.001 |",
        "| epochs | 3 |",
        "| Original checkpoints (training data) | 24 | 91.25 | 88.50 | 88.75 | 80.00 | 2.50 |",
        "| p-diff generated | 10 | 92.50 | 89.12 | 89.00 | 85.00 | 1.75 |",
        "| noise-perturbed | 10 | 70.00 |",
        "### Novelty",
        "| max_similarity_to_original | 0.875 |",
        f'PDiffPipeline.from_pretrained("{REPO}")',
        f'DiffusionPipeline.from_pretrained("{REPO}", trust_remote_code=True)',
    ]:
        assert needle in text, needle
    assert "hub_token" not in text and run["token"] not in text


def test_plain_diffusers_repo_without_remote_code(run):
    plain = _step(run, "client", "plain_repo")
    assert plain["class_name"] == "PDiffPipeline" and plain["same_params"]
    assert not any(f.endswith(".py") for f in plain["files"])


def test_revisions_branch_tag_and_commit(run):
    rev = _step(run, "client", "revisions")
    assert rev["main_is_v1"] and rev["tag_v1_is_v1"] and rev["sha_is_v1"] and rev["dev_is_v2"]
    assert not rev["v1_equals_v2"]  # the two pushes differ, so the checks above mean something
    assert rev["cached_offline_is_v1"]


def test_checkpoint_dataset_round_trip_in_shards(run):
    ds = _step(run, "client", "dataset")
    assert ds["num_shards"] >= 3, ds["data_files"]
    assert all(f.endswith(".parquet") for f in ds["data_files"])
    assert ds["layout_file"] in ds["repo_files"]
    assert ds["same_params"] and ds["same_layout"] and ds["same_metadata"]
    assert ds["stock_same_params"]  # plain datasets.load_dataset gives the same vectors
    assert ds["feature"] == "List(Value('float32'), length=22)"
    assert ds["second_config_same_params"] and ds["second_config_same_layout"]
    assert ds["ambiguous_config_error"].startswith("HubError") and "pass config_name" in ds["ambiguous_config_error"]
    card = ds["card"]
    assert {"p-diff", "parameter-generation"} <= set(card["data"]["tags"])
    assert sorted(c["config_name"] for c in card["data"]["configs"]) == sorted(ds["config_names"])
    for name in ds["config_names"]:
        assert f"`{name}`" in card["text"]
    assert "toy-mlp" in card["text"]


def test_trust_remote_code_loads_without_pdiff_hf(run):
    remote = _step(run, "remote", "load")
    client = _step(run, "client", "push_pipeline")
    assert remote["pdiff_modules"] == [] and remote["blocked_imports"] == []
    assert remote["pipeline_module"].startswith("diffusers_modules.")
    assert remote["params"] == client["params"]
    assert remote["state_dict_keys"] == ["1.weight", "1.bias", "4.weight", "4.bias"]


def test_stock_loading_without_flag_fails_clearly(run):
    remote = _step(run, "remote", "no_flag")
    assert remote["error_type"] == "ValueError"
    assert "trust_remote_code=True" in remote["message"] and "pipeline_pdiff.py" in remote["message"]
    assert remote["pdiff_modules"] == []


def test_clear_errors(run):
    errors = _step(run, "client", "errors")
    token = run["token"]
    for case, needles in {
        "missing_repo": ["HubError", f"{USER}/does-not-exist", "was not found"],
        "missing_revision": ["HubError", "'no-such-branch'", REPO],
        "missing_component": ["HubError", f"{USER}/broken", "denoiser"],
        "layout_mismatch": ["LayoutMismatchError", REPO, "target module"],
        "dataset_layout_mismatch": ["LayoutMismatchError", DATASET_REPO],
        "pickled_dataset": ["HubError", f"{USER}/pickled", "data/train-0.pkl", "parquet only"],
        "connection_refused": ["HubError", "cannot connect"],
        "not_cached_offline": ["HubError", "local cache"],
        "wrong_token": ["HubError", "401"],
        "forbidden_namespace": ["HubError", "403", "someone-else/pdiff"],
        "bad_repo_id": ["HubError", "owner/name"],
    }.items():
        message = errors[case]
        for needle in needles:
            assert needle in message, (case, message)
        assert token not in message and errors["wrong_token_value"] not in message, case
        assert "Traceback" not in message and len(message.splitlines()) <= 2, (case, message)


def test_push_command(run):
    cli = _step(run, "client", "cli")
    assert cli["rc"] == 0, cli["stderr"]
    assert f"{USER}/pdiff-cli-checkpoints" in cli["stdout"] and CLI_REPO in cli["stdout"]
    assert cli["same_params"] and cli["dataset_same_params"]
    text = cli["card"]
    assert f"{USER}/pdiff-cli-checkpoints" in text and "| p-diff generated | 10 | 92.50 |" in text
    assert f'config_name="{cli["config_name"]}"' in text and cli["config_name"].startswith("tinymlp-d22-")
    assert "| Target architecture | TinyMLP(hidden=8) |" in text and "| Selection | last-2-norm |" in text
    assert "| epochs | 3 |" in text and "| timings_s.total | 1.5 |" in text  # settings from results["config"]
    assert run["token"] not in text and "hub_token" not in text
    assert cli["bad_rc"] == 2 and cli["bad_stderr"].count("\n") == 1 and "error:" in cli["bad_stderr"]


def test_token_never_leaks(run):
    token = run["token"].encode()
    for (repo_type, repo_id), repo in run["server"].state.repos.items():
        for commit in repo.commits.values():
            for path, entry in commit.files.items():
                assert token not in entry.content, f"token found in {repo_type} {repo_id}:{path}"
    for role, log in run["logs"].items():
        assert run["token"] not in log, f"token found in the {role} log"


def test_server_saw_real_client_traffic(run):
    seen = {(m, p.split("?")[0]) for m, p in run["server"].state.requests}
    paths = {p for _, p in seen}
    assert ("POST", f"/api/models/{REPO}/preupload/main") in seen
    assert ("POST", f"/api/models/{REPO}/commit/main") in seen
    assert any(p.startswith(f"/api/models/{REPO}/revision/") for p in paths)
    assert any(p.startswith(f"/{REPO}/resolve/") for p in paths)
    assert any(p.startswith("/__lfs__/") for _, p in run["server"].state.requests)  # safetensors/parquet went by LFS
    assert any(p.startswith(f"/api/datasets/{DATASET_REPO}/tree/") for p in paths)
    assert run["seconds"] < TIMEOUT


# ==================================================================================================== client side
class Recorder:
    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def step(self, name):
        recorder = self

        class _Step:
            def __enter__(self):
                self.record = recorder.data.setdefault(name, {})
                self.start = time.time()
                return self.record

            def __exit__(self, exc_type, exc, tb):
                self.record["seconds"] = round(time.time() - self.start, 2)
                if exc is not None:
                    self.record["error"] = "".join(traceback.format_exception(exc_type, exc, tb))
                recorder.save()
                return exc is not None and not isinstance(exc, KeyboardInterrupt)

        return _Step()

    def save(self, **extra):
        self.data.update(extra)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _err(fn) -> str:
    try:
        fn()
    except Exception as err:  # the message users would see
        return f"{type(err).__name__}: {err}"
    return "no error"


def client_main(work: Path, dead_port: int) -> None:
    import torch

    torch.set_num_threads(1)
    from huggingface_hub import HfApi, ModelCard, snapshot_download
    from torch import nn

    import pdiff_hf
    from pdiff_hf import PDiffConfig, PDiffPipeline, ParamLayout, checkpoint_params, fit_pdiff, get_layout
    from pdiff_hf import make_checkpoint_dataset
    from pdiff_hf.hub import load_checkpoint_dataset, push_checkpoint_dataset, save_for_hub

    rec = Recorder(work / "client.json")
    token = os.environ["HF_TOKEN"]
    api = HfApi()
    cache = work / "cache"

    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.LayerNorm(3))
    layout = ParamLayout.from_module(net, last_norm_layers=2)
    params = torch.randn(24, layout.dim, generator=torch.Generator().manual_seed(0))
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), latent_channels=2, ae_steps=3, denoiser_block_out_channels=(8, 8),
        denoiser_steps=3, ae_train_batch_size=12, denoiser_train_batch_size=12,
    )
    pipe = fit_pdiff(params, layout, config)
    pipe.set_progress_bar_config(disable=True)

    def sample(p):
        p.set_progress_bar_config(disable=True)
        return p(**SAMPLE, generator=torch.Generator().manual_seed(0)).params

    ref = sample(pipe)
    training_args = {"learning_rate": 1e-3, "epochs": 3, "hub_token": token, "output_dir": str(work)}

    with rec.step("units") as r:
        import argparse

        from pdiff_hf.hub import default_config_name, redact, sanitize_training_args
        from pdiff_hf.remote_code import _guard_import_scan, remote_code_files

        args = argparse.Namespace(hub_token=token, lr=0.1, nested={"api_key": "k", "depth": 2}, note=f"token {token}")
        r.update(
            redacted=redact(f"Authorization: Bearer abc; token={token}", token),
            sanitized=sanitize_training_args(args, token),
            guarded=_guard_import_scan('def f():\n    """Example:\n\n        from pdiff_hf import hub\n    """\n'),
            config_name=default_config_name(layout, "MLP(hidden=8)"),
            config_name_again=default_config_name(ParamLayout.from_list(layout.to_list()), "MLP(hidden=8)"),
            remote_files=sorted(remote_code_files()),
        )

    with rec.step("push_pipeline") as r:
        info = pipe.push_to_hub(
            REPO, checkpoint_dataset_id=DATASET_REPO, results=RESULTS, training_args=training_args, target_architecture=net
        )
        r.update(commit_url=info.commit_url, oid=info.oid, params=ref.tolist())
        (work / "pushed.flag").write_text(REPO)

    with rec.step("load_pipeline") as r:
        loaded = PDiffPipeline.from_pretrained(REPO, cache_dir=cache)
        comps = [loaded.autoencoder, loaded.denoiser, loaded.scheduler]
        snapshot = Path(snapshot_download(REPO, cache_dir=cache, local_files_only=True, allow_patterns=["*.json", "*.safetensors", "README.md"]))
        r.update(
            pipeline_class=type(loaded).__name__,
            component_classes=[type(c).__name__ for c in comps],
            component_modules=[type(c).__module__ for c in comps],
            same_params=torch.equal(sample(loaded), ref),
            same_layout=loaded.layout == layout,
            repo_files=api.list_repo_files(REPO),
            downloaded_files=sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()),
        )

    with rec.step("model_card") as r:
        card = ModelCard.load(REPO)
        r.update(data=card.data.to_dict(), text=card.text)

    with rec.step("revisions") as r:
        v1 = api.model_info(REPO).sha
        api.create_tag(REPO, tag="v1")
        pipe_b = fit_pdiff(params, layout, PDiffConfig(**{**config.__dict__, "seed": 1}))
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

    with rec.step("errors") as r:
        broken = work / "broken"
        save_for_hub(pipe, broken, repo_id=f"{USER}/broken")
        for p in sorted((broken / "denoiser").iterdir()):
            p.unlink()
        (broken / "denoiser").rmdir()
        api.create_repo(f"{USER}/broken")
        api.upload_folder(repo_id=f"{USER}/broken", folder_path=broken)
        wrong = "hf_" + secrets.token_hex(16)
        r.update(
            missing_repo=_err(lambda: PDiffPipeline.from_pretrained(f"{USER}/does-not-exist", cache_dir=cache)),
            missing_revision=_err(lambda: PDiffPipeline.from_pretrained(REPO, revision="no-such-branch", cache_dir=cache)),
            missing_component=_err(lambda: PDiffPipeline.from_pretrained(f"{USER}/broken", cache_dir=cache)),
            layout_mismatch=_err(lambda: PDiffPipeline.from_pretrained(REPO, cache_dir=cache, target_module=nn.Linear(2, 2))),
            connection_refused=_err(
                lambda: PDiffPipeline.from_pretrained(REPO, cache_dir=work / "cache-dead", endpoint=f"http://127.0.0.1:{dead_port}")
            ),
            not_cached_offline=_err(lambda: PDiffPipeline.from_pretrained(f"{USER}/never", cache_dir=cache, local_files_only=True)),
            wrong_token=_err(lambda: pipe.push_to_hub(f"{USER}/pdiff-wrong", token=wrong)),
            wrong_token_value=wrong,
            forbidden_namespace=_err(lambda: pipe.push_to_hub("someone-else/pdiff", token=token)),
            bad_repo_id=_err(lambda: PDiffPipeline.from_pretrained("not a repo id!")),
        )

    with rec.step("plain_repo") as r:  # without the remote-code files: plain diffusers format, pdiff_hf classes
        pipe.push_to_hub(f"{USER}/pdiff-plain", remote_code=False)
        index = json.loads(Path(api.hf_hub_download(f"{USER}/pdiff-plain", "model_index.json")).read_text())
        r.update(
            files=api.list_repo_files(f"{USER}/pdiff-plain"),
            class_name=index["_class_name"],
            same_params=torch.equal(sample(PDiffPipeline.from_pretrained(f"{USER}/pdiff-plain")), ref),
        )

    with rec.step("dataset") as r:
        meta = {"run_id": [i // 12 for i in range(24)], "step": list(range(24)), "val_accuracy": [80.0 + i / 4 for i in range(24)]}
        ds = make_checkpoint_dataset(params, layout, meta)
        info = push_checkpoint_dataset(ds, DATASET_REPO, token=token, max_shard_size=1000, architecture="toy-mlp")
        files = api.list_repo_files(DATASET_REPO, repo_type="dataset")
        data_files = [f for f in files if f.startswith(info.config_name + "/")]
        back = load_checkpoint_dataset(DATASET_REPO, info.config_name, cache_dir=work / "ds-cache")
        import datasets
        import numpy as np

        stock = datasets.load_dataset(DATASET_REPO, info.config_name, split="train", cache_dir=work / "ds-cache-stock")
        stock_params = torch.from_numpy(np.asarray(stock.with_format("numpy")["params"], dtype=np.float32))
        # a second architecture / selection goes to its own config of the same repo
        layout2 = ParamLayout.from_module(net, include="3.*")
        params2 = torch.randn(10, layout2.dim)
        info2 = push_checkpoint_dataset(make_checkpoint_dataset(params2, layout2), DATASET_REPO, architecture="toy-mlp head")
        back2 = load_checkpoint_dataset(DATASET_REPO, config_name=info2.config_name)
        card = __import__("huggingface_hub").DatasetCard.load(DATASET_REPO, repo_type="dataset")
        r.update(
            num_shards=len(data_files),
            data_files=data_files,
            repo_files=files,
            layout_file=f"param_layouts/{info.config_name}.json",
            same_params=torch.equal(checkpoint_params(back), params),
            same_layout=get_layout(back) == layout,
            same_metadata=all(back[k] == v for k, v in meta.items()),
            stock_same_params=torch.equal(stock_params, params),
            feature=repr(back.features["params"]),
            second_config_same_params=torch.equal(checkpoint_params(back2), params2),
            second_config_same_layout=get_layout(back2) == layout2,
            ambiguous_config_error=_err(lambda: load_checkpoint_dataset(DATASET_REPO)),
            config_names=[info.config_name, info2.config_name],
            card={"data": card.data.to_dict(), "text": card.text},
        )
        api.create_repo(f"{USER}/pickled", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"\x80\x04K\x01.", path_in_repo="data/train-0.pkl", repo_id=f"{USER}/pickled", repo_type="dataset")
        api.upload_file(path_or_fileobj=json.dumps({"param_layout": layout.to_list()}).encode(), path_in_repo="param_layouts/x.json", repo_id=f"{USER}/pickled", repo_type="dataset")
        rec.data["errors"]["pickled_dataset"] = _err(lambda: load_checkpoint_dataset(f"{USER}/pickled", "x"))
        rec.data["errors"]["dataset_layout_mismatch"] = _err(
            lambda: load_checkpoint_dataset(DATASET_REPO, info.config_name, target_module=nn.Linear(8, 3))
        )

    with rec.step("cli") as r:
        import contextlib
        import io

        from pdiff_hf import cli

        folder = work / "run"
        pipe.save_pretrained(folder / "pipeline")
        ds.save_to_disk(str(folder / "checkpoints"))
        # a demo folder: results.json also records the run's settings and selection; target/ the target network
        demo_results = {**RESULTS, "config": training_args, "selection": {"name": "last-2-norm", "D": 22, "layout": layout.to_list()}}
        (folder / "results.json").write_text(json.dumps({**demo_results, "timings_s": {"total": 1.5}}))
        (folder / "target").mkdir()
        (folder / "target" / "config.json").write_text(json.dumps({"_class_name": "TinyMLP", "_diffusers_version": "0", "hidden": 8}))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["push", str(folder), "--repo-id", CLI_REPO, "--max-shard-size", "1000"])
        bad_out, bad_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(bad_out), contextlib.redirect_stderr(bad_err):
            bad_rc = cli.main(["push", str(work / "missing"), "--repo-id", CLI_REPO])
        cli_ds = load_checkpoint_dataset(f"{CLI_REPO}-checkpoints")
        r.update(
            rc=rc,
            stdout=out.getvalue(),
            stderr=err.getvalue(),
            bad_rc=bad_rc,
            bad_stderr=bad_err.getvalue(),
            card=ModelCard.load(CLI_REPO).text,
            config_name=cli_ds.info.config_name,
            same_params=torch.equal(sample(PDiffPipeline.from_pretrained(CLI_REPO)), ref),
            dataset_same_params=torch.equal(checkpoint_params(cli_ds), params),
        )
    rec.save(finished=True, pdiff_hf_version=pdiff_hf.__version__)


def remote_main(work: Path) -> None:
    """Stock diffusers only: every pdiff_hf import is blocked and recorded."""
    blocked = []

    class BlockPdiff:
        def find_spec(self, name, path=None, target=None):
            if name == "pdiff_hf" or name.startswith("pdiff_hf."):
                blocked.append(name)
                raise ImportError(f"pdiff_hf is not available in this process ({name})")
            return None

    sys.meta_path.insert(0, BlockPdiff())
    rec = Recorder(work / "remote.json")

    def pdiff_modules():
        return sorted(m for m in sys.modules if m == "pdiff_hf" or m.startswith("pdiff_hf."))

    import torch

    torch.set_num_threads(1)
    from diffusers import DiffusionPipeline

    deadline = time.time() + TIMEOUT - 30
    while not (work / "pushed.flag").exists():
        if time.time() > deadline or (work / "client.json").exists() and "error" in json.loads((work / "client.json").read_text()).get("push_pipeline", {}):
            rec.save(finished=True, waited="the client never pushed")
            return
        time.sleep(0.2)

    with rec.step("no_flag") as r:
        try:
            DiffusionPipeline.from_pretrained(REPO)
            r.update(error_type=None, message="loaded without trust_remote_code")
        except Exception as err:
            r.update(error_type=type(err).__name__, message=str(err))
        r["pdiff_modules"] = pdiff_modules()

    with rec.step("load") as r:
        pipe = DiffusionPipeline.from_pretrained(REPO, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(**SAMPLE, generator=torch.Generator().manual_seed(0))
        r.update(
            pipeline_module=type(pipe).__module__,
            params=out.params.tolist(),
            state_dict_keys=list(out.state_dicts()[0].keys()),
            pdiff_modules=pdiff_modules(),
            blocked_imports=blocked,
        )
    rec.save(finished=True)


if __name__ == "__main__":
    role, work = sys.argv[1], Path(sys.argv[2])
    if role == "client":
        client_main(work, int(sys.argv[3]))
    elif role == "remote":
        remote_main(work)
    else:
        raise SystemExit(f"unknown role {role!r}")
