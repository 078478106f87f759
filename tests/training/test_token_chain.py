"""The README's script chain at the sizes users bring, in real subprocesses: ``collect_checkpoints.py`` (the
classifier of a 150-channel MNIST1DCNN, D = 60,010) -> ``train_autoencoder.py`` (``--autoencoder_type learned``,
p-diff's recipe, picks the token autoencoder from D = 50,000 on) -> ``train_ldm.py`` -> ``pdiff-hf evaluate``.

Both training stages run with ``--use_ema``. Once as single processes, where both are killed (SIGKILL to the whole
process group) after a checkpoint, finished with ``--resume_from_checkpoint latest`` and compared with uninterrupted
runs (bit-identical); once under the 2-process gloo launch (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2``), where the token-autoencoder stage is killed and resumed and ``train_ldm.py`` runs once (each
launch costs three process start-ups, the most of this test's time). The two chains run at the same time (threads
waiting on subprocesses); MNIST-1D is replaced by a small stand-in inside the collect and evaluate subprocesses
(:data:`conftest.RUNNER`). About 3.5 min on the shared 2-core machine, nearly all of it process start-up.
"""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from pdiff_hf import PDiffPipeline, TokenParameterAutoencoder

from .conftest import (
    BIN,
    ROOT,
    RUNNER,
    SCRIPTS,
    Background,
    free_port,
    run_in_process,
    same_weights,
    subprocess_env,
)

COLLECT = ["--channels", "150", "--num_layers", "1", "--selection", "classifier", "--num_train_epochs", "1",
           "--train_batch_size", "50", "--num_checkpoints", "16", "--save_every", "1"]  # fmt: skip
DIM = 150 * 40 * 10 + 10  # classifier.weight (10, 6000) + classifier.bias (10)
# Constant learning rate, so a run killed at step k and resumed to step k + 3 trains what k + 3 steps in one go train;
# batches of 4 from 16 checkpoints: the kill lands mid-epoch.
SHARED = ["--train_batch_size", "4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--report_to", "none",
          "--checkpointing_steps", "2", "--use_ema"]  # fmt: skip
AE = [*SHARED, "--autoencoder_type", "learned", "--token_hidden_dim", "32"]
LDM = [*SHARED, "--block_out_channels", "8", "16", "--num_train_timesteps", "100", "--num_validation_models", "2",
       "--num_inference_steps", "5"]  # fmt: skip
MORE_STEPS = 3  # trained after the resume
LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
          "no", "--dynamo_backend", "no"]  # fmt: skip


def _checkpoint_steps(out):
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def _wait_until_gone(out, timeout=120):
    """Until no process has ``out`` on its command line (``pgrep -f``: looks only)."""
    deadline = time.time() + timeout
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split():
        assert time.time() < deadline, f"processes writing into {out} still run"
        time.sleep(0.2)


def _kill_then_resume(command, argv, out, env, log_dir):
    """Run ``command + argv`` without a step limit, SIGKILL it (launcher and workers) once a checkpoint is complete,
    then finish it with ``--resume_from_checkpoint latest`` and ``MORE_STEPS`` more steps. Returns ``(checkpoint
    step resumed from, total steps, log of the resumed run)``."""
    name = out.name
    proc = Background([*command(), *argv, "--output_dir", out, "--max_train_steps", "100000"], env, log_dir / f"{name}.log")
    deadline = time.time() + 600
    while not _checkpoint_steps(out):
        assert proc.proc.poll() is None, f"{name} ended early ({proc.proc.returncode}):\n{proc.log()[-3000:]}"
        assert time.time() < deadline, f"{name}: no checkpoint:\n{proc.log()[-3000:]}"
        time.sleep(0.05)
    proc.stop()  # SIGKILL to the whole session, wherever it is (possibly in the middle of the next save)
    _wait_until_gone(out)  # workers of a launch that outlive their launcher save a checkpoint and stop on their own
    step = _checkpoint_steps(out)[-1]
    total = step + MORE_STEPS
    resumed = Background([*command(), *argv, "--output_dir", out, "--max_train_steps", total,
                          "--resume_from_checkpoint", "latest"], env, log_dir / f"{name}-resumed.log")  # fmt: skip
    try:
        rc, log = resumed.result(timeout=600)
    finally:
        resumed.stop()
    assert rc == 0, f"{name} resumed:\n{log[-4000:]}"
    resumed_from = [line for line in log.splitlines() if "resuming from" in line]
    assert resumed_from and resumed_from[0].endswith(f"resuming from {out / f'checkpoint-{step}'}"), resumed_from
    return step, total, log


def _chain(collected, root, env, launch):
    """train_autoencoder.py -> train_ldm.py (each killed and resumed) -> pdiff-hf evaluate, into ``root``."""
    root.mkdir()

    def command(script):
        if launch:
            return lambda: [BIN / LAUNCH[0], *LAUNCH[1:], "--main_process_port", free_port(), SCRIPTS / script]
        return lambda: [sys.executable, SCRIPTS / script]

    dataset = ["--dataset_name", collected / "checkpoints"]
    ae_step, ae_total, ae_log = _kill_then_resume(command("train_autoencoder.py"), [*dataset, *AE], root / "ae", env, root)
    ldm_argv = [*dataset, "--pretrained_autoencoder_name_or_path", root / "ae", *LDM]
    if launch:  # one launch of train_ldm.py (EMA on), killed-and-resumed above only the stage with the token autoencoder
        ldm_step = ldm_total = 4
        proc = Background([*command("train_ldm.py")(), *ldm_argv, "--output_dir", root / "ldm", "--max_train_steps",
                           ldm_total], env, root / "ldm.log")  # fmt: skip
        rc, ldm_log = proc.result(timeout=600)
        assert rc == 0, ldm_log[-4000:]
    else:
        ldm_step, ldm_total, ldm_log = _kill_then_resume(command("train_ldm.py"), ldm_argv, root / "ldm", env, root)
    evaluate = [sys.executable, "-c", RUNNER, "pdiff-hf", "evaluate", "--pipeline", root / "ldm", "--checkpoints",
                collected / "checkpoints", "--target", collected / "target", "--task", "mnist1d", "--num-models", "3",
                "--num-inference-steps", "2", "--noise-levels", "0.1", "--average-k", "2", "--output-dir", root / "eval"]  # fmt: skip
    proc = subprocess.run([str(c) for c in evaluate], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "ae_step": ae_step, "ae_total": ae_total, "ae_log": ae_log, "ldm_step": ldm_step,
            "ldm_total": ldm_total, "ldm_log": ldm_log, "ldm_argv": ldm_argv, "ae_argv": [*dataset, *AE]}  # fmt: skip


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token-chain")
    env = subprocess_env(tmp)
    collected = tmp / "collected"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(SCRIPTS / "collect_checkpoints.py"), "--output_dir",
                           str(collected), *COLLECT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with ThreadPoolExecutor(2) as pool:
        single = pool.submit(_chain, collected, tmp / "single", env, False)
        launched = pool.submit(_chain, collected, tmp / "launched", env, True)
        return {"collected": collected, "single": single.result(), "launched": launched.result()}


@pytest.mark.parametrize("mode", ["single", "launched"])
def test_the_token_autoencoder_is_trained_resumed_with_ema_and_loaded_by_train_ldm(chains, mode):
    run = chains[mode]
    config = json.loads((run["root"] / "ae" / "config.json").read_text())
    assert config["_class_name"] == "TokenParameterAutoencoder" and config["in_dim"] == DIM
    last = run["root"] / "ae" / f"checkpoint-{run['ae_total'] - run['ae_total'] % 2}"
    assert (last / "autoencoder_ema" / "config.json").is_file()  # the EMA survived the checkpoint saves
    assert json.loads((last / "autoencoder_ema" / "config.json").read_text())["_class_name"] == "TokenParameterAutoencoder"
    index = json.loads((run["root"] / "ldm" / "model_index.json").read_text())
    assert index["autoencoder"][1] == "TokenParameterAutoencoder"
    assert (run["root"] / "ldm" / f"checkpoint-{run['ldm_step']}" / "denoiser_ema" / "config.json").is_file()
    processes = 2 if mode == "launched" else 1
    assert f"x {processes} processes" in run["ae_log"] and f"x {processes} processes" in run["ldm_log"]


@pytest.mark.parametrize("mode", ["single", "launched"])
def test_the_resumed_pipeline_samples_and_is_evaluated(chains, mode):
    run = chains[mode]
    pipe = PDiffPipeline.from_pretrained(str(run["root"] / "ldm"))
    assert isinstance(pipe.autoencoder, TokenParameterAutoencoder)
    pipe.set_progress_bar_config(disable=True)
    params = pipe(num_models=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).params
    assert params.shape == (2, DIM) and params.isfinite().all()
    results = json.loads((run["root"] / "eval" / "results.json").read_text())
    assert results["generated"]["count"] == 3 and results["original"]["count"] == 16


def test_single_process_resume_is_bit_identical_to_an_uninterrupted_run(chains, scripts, tmp_path):
    run = chains["single"]
    assert run_in_process(scripts["train_autoencoder"], [*run["ae_argv"], "--output_dir", tmp_path / "ae",
                                                         "--max_train_steps", run["ae_total"]]) == 0  # fmt: skip
    assert same_weights(TokenParameterAutoencoder.from_pretrained(str(tmp_path / "ae")),
                        TokenParameterAutoencoder.from_pretrained(str(run["root"] / "ae")))  # fmt: skip
    # on the resumed autoencoder, equal to the uninterrupted one
    assert run_in_process(scripts["train_ldm"], [*run["ldm_argv"], "--output_dir", tmp_path / "ldm",
                                                 "--max_train_steps", run["ldm_total"]]) == 0  # fmt: skip
    assert same_weights(PDiffPipeline.from_pretrained(str(tmp_path / "ldm")).denoiser,
                        PDiffPipeline.from_pretrained(str(run["root"] / "ldm")).denoiser)  # fmt: skip
