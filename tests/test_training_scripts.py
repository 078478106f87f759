"""The Accelerate training scripts in ``training/``: end-to-end runs, resumption, data parallelism and bad input.

Most runs call the scripts' ``cli(argv)`` in this process (each subprocess pays ~10 s of imports on a small
machine); two runs go through real subprocesses: ``accelerate launch`` with two CPU processes (gloo), and plain
``python training/train_ldm.py`` with bad input (exit code 2, one line, no traceback).
"""

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pdiff_hf import ParamLayout, make_checkpoint_dataset
from pdiff_hf.accelerate_loop import (
    CHECKPOINT_MARKER,
    TEST_CRASH_ENV,
    TEST_SIGINT_ENV,
    ShardedBatchStream,
    _TestCrash,
    list_checkpoints,
    prune_checkpoints,
    save_pretrained_atomically,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "training"
BIN = Path(sys.executable).parent
D, N = 64, 32

TINY_AE = [
    "--ae_block_out_channels", "8", "8",
    "--train_batch_size", "8",
    "--lr_warmup_steps", "2",
    "--report_to", "none",
]
TINY = TINY_AE + ["--denoiser_block_out_channels", "8", "16", "--num_train_timesteps", "100"]
LDM = TINY + [
    "--ae_lr_warmup_steps", "2",
    "--ae_max_train_steps", "6",
    "--ae_checkpointing_steps", "3",
    "--max_train_steps", "12",
    "--checkpointing_steps", "4",
    "--checkpoints_total_limit", "2",
    "--use_ema",
    "--gradient_accumulation_steps", "2",
    "--num_validation_models", "2",
    "--num_inference_steps", "5",
    "--seed", "3",
]  # fmt: skip


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_pdiff_training_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return {name: _load_script(name) for name in ("train_ldm", "train_autoencoder", "collect_checkpoints")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """32 checkpoints of a Linear(7, 8) (D=64) around one base point."""
    torch.manual_seed(0)
    layout = ParamLayout.from_module(nn.Linear(7, 8))
    base = torch.randn(D)
    params = base + 0.05 * torch.randn(N, D)
    path = tmp_path_factory.mktemp("data") / "checkpoints"
    make_checkpoint_dataset(params, layout, {"run_id": [0] * N, "step": list(range(N))}).save_to_disk(str(path))
    return path


def _weights(folder):
    return {
        part: load_file(str(folder / part / "diffusion_pytorch_model.safetensors")) for part in ("autoencoder", "denoiser")
    }


def _assert_same_weights(a, b):
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


def _check_pipeline(folder, num_models=3):
    from pdiff_hf import PDiffPipeline

    pipe = PDiffPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_models=num_models, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (num_models, D)
    assert torch.isfinite(out.params).all()
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    return pipe


def _run(script, argv, caplog=None):
    if caplog is not None:
        caplog.set_level(logging.INFO)
        caplog.clear()
    return script.cli([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------ the stream
def test_sharded_batch_stream_is_disjoint_across_ranks_and_covers_each_epoch():
    ranks = [ShardedBatchStream(32, 8, num_processes=2, process_index=r, seed=5) for r in range(2)]
    for k in range(2):  # two global micro-batches = one epoch of 32 samples
        a, b = ranks[0].batch(k), ranks[1].batch(k)
        assert len(a) == len(b) == 8 and not set(a.tolist()) & set(b.tolist())
    epoch = torch.cat([r.batch(k) for k in range(2) for r in ranks])
    assert sorted(epoch.tolist()) == list(range(32))
    again = ShardedBatchStream(32, 8, num_processes=2, process_index=1, seed=5)
    assert torch.equal(again.batch(7), ranks[1].batch(7))  # a function of (seed, k, rank) only: resumable
    assert len(ShardedBatchStream(5, 8).batch(0)) == 5  # batch clamped to the dataset


def test_atomic_save_and_checkpoint_pruning(tmp_path):
    class Saver:
        def __init__(self, fail):
            self.fail = fail

        def save_pretrained(self, path):
            os.makedirs(path, exist_ok=True)
            Path(path, "model_index.json").write_text("{}")
            if self.fail:
                raise RuntimeError("disk full")

    target = tmp_path / "pipeline"
    with pytest.raises(RuntimeError):
        save_pretrained_atomically(Saver(fail=True), str(target))
    assert not target.exists()  # nothing that looks complete
    (tmp_path / ".pipeline.tmp-killed").mkdir()  # what a killed run leaves behind
    save_pretrained_atomically(Saver(fail=False), str(target))
    assert (target / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # temporary folders cleaned up

    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / CHECKPOINT_MARKER).write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()  # incomplete: no marker
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
    prune_checkpoints(str(tmp_path), total_limit=2, keep_free=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-15"]


# ---------------------------------------------------------------------------------------------- train_ldm.py
@pytest.fixture(scope="module")
def reference_run(scripts, dataset_dir, tmp_path_factory):
    """One uninterrupted train_ldm.py run (autoencoder stage, then denoiser) with TensorBoard logging."""
    out = tmp_path_factory.mktemp("ldm") / "reference"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", out] + LDM + ["--report_to", "tensorboard"]
    rc = _run(scripts["train_ldm"], argv)
    assert rc == 0
    return out


def test_train_ldm_writes_a_loadable_pipeline(reference_run):
    out = reference_run
    pipe = _check_pipeline(out / "pipeline")
    assert pipe.autoencoder.config.scaling_factor != 1.0  # latent scaling was fitted
    assert pipe.denoiser.config.sample_abs_max > 0
    assert pipe.layout.dim == D
    # checkpoints: every 4 steps, at most 2 kept; the autoencoder stage keeps its own
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-8", "checkpoint-12"]
    assert [p.name for p in list_checkpoints(str(out / "autoencoder_checkpoints"))] == ["checkpoint-3", "checkpoint-6"]
    assert (out / "checkpoint-12" / "ema_state.pt").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard events written"
    assert not list(out.glob(".pipeline*")), "temporary pipeline folder left behind"


def test_crash_then_resume_latest_matches_uninterrupted_run(
    scripts, dataset_dir, reference_run, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "crashed"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", out] + LDM
    monkeypatch.setenv(TEST_CRASH_ENV, "denoiser:10")  # dies after denoiser step 10, between checkpoints 8 and 12
    with pytest.raises(_TestCrash):
        _run(scripts["train_ldm"], argv)
    monkeypatch.delenv(TEST_CRASH_ENV)
    assert not (out / "pipeline").exists()
    assert (out / "autoencoder" / "config.json").is_file()
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-4", "checkpoint-8"]

    assert _run(scripts["train_ldm"], argv + ["--resume_from_checkpoint", "latest"], caplog) == 0
    assert "resumed denoiser training from step 8" in caplog.text
    assert "training autoencoder" not in caplog.text  # the finished autoencoder was reused
    _check_pipeline(out / "pipeline")
    # optimizer, LR schedule, EMA, RNG and data order were restored: bit-identical to the uninterrupted run
    _assert_same_weights(_weights(out / "pipeline"), _weights(reference_run / "pipeline"))


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes(
    scripts, dataset_dir, reference_run, tmp_path, monkeypatch, capsys, caplog
):
    out = tmp_path / "interrupted"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", out] + LDM
    monkeypatch.setenv(TEST_SIGINT_ENV, "autoencoder:4")  # SIGINT to ourselves after autoencoder step 4
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    assert _run(scripts["train_ldm"], argv) == 130
    monkeypatch.delenv(TEST_SIGINT_ENV)
    assert "interrupted at step 4" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
    assert [p.name for p in list_checkpoints(str(out / "autoencoder_checkpoints"))] == ["checkpoint-3", "checkpoint-4"]
    assert not (out / "pipeline").exists() and not (out / "autoencoder").exists()

    assert _run(scripts["train_ldm"], argv + ["--resume_from_checkpoint", "latest"], caplog) == 0
    assert "resumed autoencoder training from step 4" in caplog.text
    _check_pipeline(out / "pipeline")
    _assert_same_weights(_weights(out / "pipeline"), _weights(reference_run / "pipeline"))


def test_resume_explicit_checkpoint_and_pretrained_autoencoder(scripts, dataset_dir, reference_run, tmp_path, caplog):
    out = tmp_path / "denoiser_only"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", out, "--pretrained_autoencoder", reference_run / "autoencoder"]
    argv += LDM + ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    assert _run(scripts["train_ldm"], argv, caplog) == 0
    assert "training autoencoder" not in caplog.text
    _check_pipeline(out / "pipeline")
    # resuming a finished run from an explicit checkpoint name trains the remaining steps and rewrites the pipeline
    assert _run(scripts["train_ldm"], argv + ["--resume_from_checkpoint", "checkpoint-2"], caplog) == 0
    assert "resumed denoiser training from step 2" in caplog.text
    _check_pipeline(out / "pipeline")


def test_push_to_hub_calls_push_pipeline_and_never_logs_the_token(
    scripts, dataset_dir, reference_run, tmp_path, monkeypatch, capsys, caplog
):
    import pdiff_hf.hub

    calls = []
    monkeypatch.setattr(pdiff_hf.hub, "push_pipeline", lambda pipe, repo_id, **kw: calls.append((pipe, repo_id, kw)))
    secret = "hf_secretTOKEN123"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", tmp_path / "pushed"] + TINY
    argv += ["--pretrained_autoencoder", reference_run / "autoencoder", "--max_train_steps", "2", "--report_to", "tensorboard"]
    argv += ["--push_to_hub", "--hub_model_id", "user/pdiff-tiny", "--hub_token", secret, "--hub_private_repo"]
    assert _run(scripts["train_ldm"], argv, caplog) == 0
    (pipe, repo_id, kw), = calls
    assert repo_id == "user/pdiff-tiny" and kw["token"] == secret and kw["private"] is True
    assert type(pipe).__name__ == "PDiffPipeline"
    assert not any("token" in key for key in kw["training_args"])
    hparams = "".join(p.read_text() for p in (tmp_path / "pushed" / "logs").rglob("hparams.yml"))
    assert "hub_model_id" in hparams and secret not in hparams
    assert secret not in caplog.text and secret not in capsys.readouterr().err


# ------------------------------------------------------------------------------------- train_autoencoder.py
def test_train_autoencoder_script(scripts, dataset_dir, tmp_path):
    from pdiff_hf import ParameterAutoencoder

    out = tmp_path / "ae"
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", out] + TINY_AE
    argv += ["--max_train_steps", "6", "--checkpointing_steps", "3", "--use_ema"]
    assert _run(scripts["train_autoencoder"], argv) == 0
    ae = ParameterAutoencoder.from_pretrained(str(out / "autoencoder"))
    assert ae.config.in_dim == D and ae.config.scaling_factor != 1.0
    assert not torch.equal(ae.norm_std, torch.ones(D))  # normalization statistics were fitted and saved
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-3", "checkpoint-6"]


# ----------------------------------------------------------------------------------- collect_checkpoints.py
def test_collect_checkpoints_script(scripts, tmp_path, monkeypatch):
    import datasets

    from pdiff_hf import ClassificationSplits, checkpoint_params, get_layout
    from pdiff_hf.tasks import mnist1d
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN

    g = torch.Generator().manual_seed(0)

    def small_mnist1d(seed=42, num_val=500):  # generating the real MNIST-1D takes ~7 s
        x = torch.randn(300, 1, 40, generator=g)
        y = torch.randint(0, 10, (300,), generator=g)
        return ClassificationSplits(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])

    monkeypatch.setattr(mnist1d, "load_mnist1d", small_mnist1d)
    out = tmp_path / "collected"
    argv = ["--output_dir", out, "--channels", "4", "--num_train_epochs", "1", "--train_batch_size", "50"]
    argv += ["--num_checkpoints", "6", "--save_every", "2", "--selection", "last_norm_layers"]
    assert _run(scripts["collect_checkpoints"], argv) == 0
    ds = datasets.load_from_disk(str(out / "checkpoints"))
    layout = get_layout(ds)
    assert checkpoint_params(ds).shape == (6, layout.dim) and layout.dim == 4 * 4  # 2 BatchNorm layers x (w, b)
    assert ds["step"] == [2, 4, 6, 8, 10, 12]
    model = MNIST1DCNN.from_pretrained(str(out / "target"))
    layout.check_module(model)
    assert json.loads((out / "collect_args.json").read_text())["num_checkpoints"] == 6
    assert not list(out.glob(".*")), "temporary folders left behind"

    # rerunning replaces the earlier collection; --selection takes globs; a selection matching nothing is bad input
    assert _run(scripts["collect_checkpoints"], argv[:-1] + ["classifier.bias"]) == 0
    assert get_layout(datasets.load_from_disk(str(out / "checkpoints"))).dim == 10
    assert _run(scripts["collect_checkpoints"], argv[:-1] + ["nothing.matches"]) == 2
    assert _run(scripts["collect_checkpoints"], argv + ["--num_checkpoints", "0"]) == 2


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_datasets(tmp_path_factory):
    import datasets

    from pdiff_hf.checkpoints import set_layout

    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    datasets.Dataset.from_dict({"params": [[0.0] * 4] * 3}).save_to_disk(str(root / "no_layout"))
    layout = ParamLayout.from_module(nn.Linear(3, 1))
    set_layout(datasets.Dataset.from_dict({"weights": [[0.0] * 4] * 3}), layout).save_to_disk(str(root / "no_params"))
    (root / "checkpoint-7").mkdir()  # a checkpoint folder without its marker (interrupted save)
    return root


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing dataset", ["--checkpoint_dataset", "{root}/nope"], "does not exist"),
        ("not a dataset", ["--checkpoint_dataset", "{root}/empty"], "not a dataset saved with save_to_disk"),
        ("no layout", ["--checkpoint_dataset", "{root}/no_layout"], "parameter layout"),
        ("no params column", ["--checkpoint_dataset", "{root}/no_params"], "'params' column"),
        ("push without id", ["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        ("total limit", ["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1"),
        ("zero steps", ["--max_train_steps", "0"], "--max_train_steps must be >= 1"),
        ("resume to nothing", ["--resume_from_checkpoint", "{root}/no/such/checkpoint-3"], "does not exist"),
        ("incomplete checkpoint", ["--resume_from_checkpoint", "{root}/checkpoint-7"], "not a complete checkpoint"),
        ("unknown flag", ["--learning_rat", "1"], "unrecognized arguments"),
        ("missing autoencoder", ["--pretrained_autoencoder", "{root}/nope"], "--pretrained_autoencoder"),
    ],
)
def test_bad_input_exits_2_with_one_line(scripts, dataset_dir, bad_datasets, tmp_path, capsys, case, extra, message):
    argv = ["--checkpoint_dataset", dataset_dir, "--output_dir", tmp_path / "out"] + TINY + ["--max_train_steps", "2"]
    argv += [e.format(root=bad_datasets) for e in extra]
    capsys.readouterr()
    assert _run(scripts["train_ldm"], argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("train_ldm.py: error: ") and message in err, err
    assert not (tmp_path / "out" / "pipeline").exists()


# ------------------------------------------------------------------------------------------- subprocesses
# Both subprocesses start when this module's first test starts and run while the in-process tests run: each pays
# ~10 s of imports (twice for the two-process run), which would otherwise dominate the file's run time.
def _env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))
    env.update(ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop(TEST_CRASH_ENV, None)
    env.pop(TEST_SIGINT_ENV, None)
    return env


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Background:
    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def result(self, timeout=400):
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return rc, Path(self.log_path).read_text()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started (launcher + its workers)
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


SUBPROCESS_TESTS = ("test_dimension_mismatch_exits_2_without_traceback", "test_train_ldm_data_parallel_with_two_cpu_processes")


@pytest.fixture(scope="module", autouse=True)
def background_runs(request, dataset_dir, tmp_path_factory):
    from pdiff_hf import ParameterAutoencoder

    if not any(item.originalname in SUBPROCESS_TESTS for item in request.session.items):
        yield {}  # e.g. `-k bad_input`: do not start subprocesses nobody waits for
        return
    root = tmp_path_factory.mktemp("subprocess")
    env = _env(root)

    # 1. accelerate launch with two CPU processes (gloo): real data-parallel training of both stages
    ddp_out = root / "ddp"
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += [str(SCRIPTS / "train_ldm.py"), "--checkpoint_dataset", str(dataset_dir), "--output_dir", str(ddp_out)]
    cmd += TINY + ["--ae_max_train_steps", "4", "--max_train_steps", "4", "--checkpointing_steps", "2"]
    cmd += ["--ae_lr_warmup_steps", "1", "--num_validation_models", "2", "--num_inference_steps", "5"]
    ddp = _Background(cmd, env, root / "ddp.log")

    # 2. plain python with a pretrained autoencoder for D=32 on a D=64 dataset: exit code 2, one line
    ParameterAutoencoder(in_dim=D // 2, block_out_channels=(8, 8)).save_pretrained(str(root / "ae32"))
    cmd = [sys.executable, str(SCRIPTS / "train_ldm.py"), "--checkpoint_dataset", str(dataset_dir)]
    cmd += ["--output_dir", str(root / "mismatch"), "--pretrained_autoencoder", str(root / "ae32")]
    mismatch = _Background(cmd, env, root / "mismatch.log")

    runs = {"ddp": (ddp, ddp_out), "mismatch": (mismatch, root / "mismatch")}
    yield runs
    for proc, _ in runs.values():
        proc.stop()


def test_dimension_mismatch_exits_2_without_traceback(background_runs):
    proc, out = background_runs["mismatch"]
    rc, log = proc.result()
    assert rc == 2, log[-3000:]
    assert "Traceback" not in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("train_ldm.py: error: ") and "D=32" in last and "D=64" in last, log[-2000:]
    assert not (out / "pipeline").exists()


def test_train_ldm_data_parallel_with_two_cpu_processes(background_runs):
    proc, out = background_runs["ddp"]
    rc, log = proc.result()
    assert rc == 0, log[-4000:]
    assert "num_processes=2" in log and "MULTI_CPU" in log, log[-4000:]
    assert "x 2 processes" in log
    _check_pipeline(out / "pipeline")
    ckpt = out / "checkpoint-4"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    marker = json.loads((ckpt / CHECKPOINT_MARKER).read_text())
    assert marker["num_processes"] == 2 and marker["stage"] == "denoiser"
