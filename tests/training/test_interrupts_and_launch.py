"""The training scripts as real processes: Ctrl-C and SIGKILL in the middle of training then resume bit-identically,
`accelerate launch` with two CPU processes (gloo), and bad input ending with exit code 2 and one line.

The launch and bad-input runs start together when this module's first test starts (each pays several seconds of
imports) and run while the other tests go on; the interrupted runs start in their tests.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from pdiff_hf import ParameterAutoencoder, PDiffPipeline

from .conftest import (
    BIN,
    SCRIPTS,
    TINY_AE,
    TINY_LDM,
    Background,
    free_port,
    run_in_process,
    same_weights,
    subprocess_env,
)

# Constant learning rate: a run stopped at step k and resumed to step k + 5 must equal a run of k + 5 steps.
ENDLESS = ["--max_train_steps", "100000", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
           "--checkpointing_steps", "5", "--checkpoints_total_limit", "2"]  # fmt: skip


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.proc.returncode}):\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out:\n{proc.log()[-3000:]}")


@pytest.fixture(scope="module")
def runs(scripts, dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    env = subprocess_env(root)
    ae_dir = root / "ae"
    assert run_in_process(scripts["train_autoencoder"], ["--dataset_name", dataset_dir, "--output_dir", ae_dir, *TINY_AE,
                                                         "--max_train_steps", "4"]) == 0  # fmt: skip
    started = {}
    launch = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]  # fmt: skip
    ddp = root / "ddp"
    two_stages = (
        " ".join(map(str, launch + [free_port(), SCRIPTS / "train_autoencoder.py", "--dataset_name", dataset_dir,
                                    "--output_dir", ddp / "ae", *TINY_AE, "--max_train_steps", "4"]))
        + " && "
        + " ".join(map(str, launch + [free_port(), SCRIPTS / "train_ldm.py", "--dataset_name", dataset_dir,
                                      "--pretrained_autoencoder_name_or_path", ddp / "ae", "--output_dir", ddp / "ldm",
                                      *TINY_LDM, "--max_train_steps", "4", "--checkpointing_steps", "2"]))
    )  # fmt: skip
    started["ddp"] = Background(["bash", "-c", two_stages], env, root / "ddp.log")
    started["bad"] = Background([sys.executable, SCRIPTS / "train_ldm.py", "--dataset_name", root / "nope",
                                 "--pretrained_autoencoder_name_or_path", ae_dir], env, root / "bad.log")
    yield {"root": root, "ae": ae_dir, "env": env, **started}
    for proc in started.values():
        proc.stop()


def test_sigkill_during_training_then_resume_latest_is_bit_identical(scripts, dataset_dir, runs, tmp_path):
    # started here, not with the other runs: the step it is killed at must stay small (it is replayed in-process)
    out = tmp_path / "kill"
    proc = Background([sys.executable, SCRIPTS / "train_autoencoder.py", "--dataset_name", dataset_dir,
                       "--output_dir", out, *TINY_AE, *ENDLESS], runs["env"], tmp_path / "kill.log")  # fmt: skip
    _wait_for(lambda: any(int(p.name.split("-")[1]) >= 10 for p in out.glob("checkpoint-*")), proc)
    proc.stop()  # SIGKILL to the whole session, wherever it is (possibly in the middle of a save)
    assert proc.proc.returncode == -signal.SIGKILL
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    step = int(checkpoints[-1].name.split("-")[1])
    assert step >= 10 and not (out / "config.json").exists()

    argv = ["--dataset_name", dataset_dir, *TINY_AE, *ENDLESS[2:]]
    stop_at = ["--max_train_steps", step + 5]
    assert run_in_process(scripts["train_autoencoder"], argv + ["--output_dir", out, *stop_at, "--resume_from_checkpoint", "latest"]) == 0
    assert run_in_process(scripts["train_autoencoder"], argv + ["--output_dir", tmp_path / "full", *stop_at]) == 0
    assert same_weights(ParameterAutoencoder.from_pretrained(str(out)), ParameterAutoencoder.from_pretrained(str(tmp_path / "full")))


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_bit_identically(scripts, dataset_dir, runs, tmp_path):
    out = tmp_path / "ctrl_c"
    proc = Background([sys.executable, SCRIPTS / "train_ldm.py", "--dataset_name", dataset_dir,
                       "--pretrained_autoencoder_name_or_path", runs["ae"], "--output_dir", out, *TINY_LDM, *ENDLESS],
                      runs["env"], tmp_path / "ctrl_c.log")  # fmt: skip
    _wait_for(lambda: any(out.glob("checkpoint-*")), proc)
    proc.proc.send_signal(signal.SIGINT)
    try:
        rc, log = proc.result(timeout=120)
    finally:
        proc.stop()
    assert rc == 130, log[-3000:]
    assert "resume with --resume_from_checkpoint latest" in log, log[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    step = int(checkpoints[-1].name.split("-")[1])
    assert f"interrupted at step {step}" in log, log[-3000:]  # the checkpoint is the step where it stopped
    assert not (out / "model_index.json").exists()

    argv = ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", runs["ae"], *TINY_LDM, *ENDLESS[2:]]
    stop_at = ["--max_train_steps", step + 5]
    assert run_in_process(scripts["train_ldm"], argv + ["--output_dir", out, *stop_at, "--resume_from_checkpoint", "latest"]) == 0
    assert run_in_process(scripts["train_ldm"], argv + ["--output_dir", tmp_path / "full", *stop_at]) == 0
    assert same_weights(PDiffPipeline.from_pretrained(str(out)).denoiser, PDiffPipeline.from_pretrained(str(tmp_path / "full")).denoiser)


def test_accelerate_launch_with_two_cpu_processes(runs):
    rc, log = runs["ddp"].result()
    assert rc == 0, log[-4000:]
    assert "MULTI_CPU" in log and "Num processes: 2" in log, log[-4000:]
    assert "x 2 processes" in log
    ldm = runs["root"] / "ddp" / "ldm"
    checkpoint = ldm / "checkpoint-4"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    pipe = PDiffPipeline.from_pretrained(str(ldm))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_models=2, num_inference_steps=5).params.isfinite().all()


def test_bad_input_exits_2_with_one_line_and_no_traceback(runs):
    rc, log = runs["bad"].result()
    assert rc == 2, log[-3000:]
    assert "Traceback" not in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("train_ldm.py: error: ") and "nope" in last, log[-2000:]


def test_a_second_run_into_a_folder_in_use_stops_at_once(dataset_dir, runs, tmp_path):
    from pdiff_hf.utils.io_utils import locked_dir

    out = tmp_path / "busy"
    with locked_dir(out):  # as a running script holds it
        proc = Background([sys.executable, SCRIPTS / "train_autoencoder.py", "--dataset_name", dataset_dir,
                           "--output_dir", out, *TINY_AE], runs["env"], tmp_path / "busy.log")  # fmt: skip
        rc, log = proc.result(timeout=120)
    assert rc == 2, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("train_autoencoder.py: error: ") and "locked" in last, last
    assert not list(out.glob("checkpoint-*")) and not (out / "config.json").exists()


def test_killing_only_the_launcher_stops_the_workers_with_a_checkpoint(dataset_dir, runs, tmp_path):
    out = tmp_path / "orphans"
    cmd = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
           SCRIPTS / "train_autoencoder.py", "--dataset_name", dataset_dir, "--output_dir", out, *TINY_AE, *ENDLESS]
    proc = Background(cmd, runs["env"], tmp_path / "orphans.log")  # fmt: skip
    try:
        _wait_for(lambda: any(out.glob("checkpoint-*")), proc)
        os.kill(proc.proc.pid, signal.SIGKILL)  # the launcher only: its two workers are left behind
        deadline = time.time() + 120
        while "interrupted at step" not in proc.log() and time.time() < deadline:
            time.sleep(0.2)
        log = proc.log()
        assert "interrupted at step" in log, log[-3000:]
        step = int(log.split("interrupted at step ")[-1].split(";")[0])
        assert (out / f"checkpoint-{step}").is_dir()
        deadline = time.time() + 60
        while (alive := subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()):
            assert time.time() < deadline, f"workers still running: {alive}"
            time.sleep(0.5)
    finally:
        subprocess.run(["pkill", "-9", "-f", str(out)], capture_output=True)
        proc.stop()
