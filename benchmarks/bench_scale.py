#!/usr/bin/env python
"""p-diff at D = 10^4 to 10^6: training-step and sampling times and peak memory of the models ``fit_pdiff`` builds.

For every ``--dims`` value, in a fresh subprocess (so that peak RSS belongs to that D alone), on synthetic low-rank
checkpoints of a four-tensor layout (``--num_checkpoints`` rows):

* seconds per autoencoder training step (loss, backward, AdamW step; batch ``--batch_size``),
* seconds per denoiser training step (the same, on latents of the autoencoder's shape),
* seconds to sample ``--num_models`` models with ``PDiffPipeline`` (``--steps`` DPM-Solver++ steps, decoded to raw
  parameters),
* peak RSS of the process (``resource.getrusage``), and with ``--device cuda`` peak GPU memory,

as medians of ``--repeats`` runs after one warm-up: wall-clock seconds, and under ``cpu_s`` the CPU seconds of the
process (``time.process_time``), which a shared machine's load inflates far less. The autoencoder is what ``build_autoencoder`` picks for
``--autoencoder_type`` (``auto``: the token autoencoder from D = 10^4 on)::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --dims 10000 100000 1000000 --repeats 3
    python benchmarks/bench_scale.py --device cuda --dims 10000 100000 1000000 10000000

``--memory tensor`` / ``--memory dataset`` instead measures the peak RSS of ``fit_pdiff`` (``--memory_steps``
steps per stage) and sampling ``--num_models`` models, with the checkpoints given as an ``(N, D)`` tensor or as a
checkpoint dataset written by another process and memory-mapped with ``datasets.load_from_disk``::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --dims 1000000 --memory dataset
    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --dims 1000000 --memory tensor

``--compare`` instead trains the conv and the token autoencoder side by side for ``--compare_steps`` steps at
each D and prints held-out reconstruction MSE (normalized space: predicting the mean scores 1.0) and seconds per
step, the measurement behind ``PDiffConfig.autoencoder_type="auto"``::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --compare --dims 1000 10000 100000

Figures are printed, never asserted.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from pdiff_hf import ParamLayout, ParamSpec
from pdiff_hf.training.config import PDiffConfig
from pdiff_hf.training.training_utils import (
    autoencoder_loss,
    build_autoencoder,
    build_denoiser,
    denoiser_loss,
    noise_scheduler_for,
    sampling_scheduler_for,
)


def synthetic_layout(dim: int) -> ParamLayout:
    """Four tensors summing to ``dim``, shaped like a two-layer MLP: a large weight, a bias, a weight, a bias."""
    b1, b2 = max(1, dim // 1000), max(1, min(10, dim // 100))
    w2 = max(1, dim // 10)
    w1 = dim - b1 - b2 - w2
    return ParamLayout((ParamSpec("fc1.weight", (w1,)), ParamSpec("fc1.bias", (b1,)),
                        ParamSpec("fc2.weight", (w2,)), ParamSpec("fc2.bias", (b2,))))  # fmt: skip


def synthetic_checkpoints(num: int, dim: int, rank: int = 8, seed: int = 0) -> torch.Tensor:
    """``(num, dim)`` checkpoints of one training run's tail: a base vector, a rank-``rank`` drift and small noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g) * 0.1
    loadings = torch.randn(rank, dim, generator=g) * 0.01
    params = torch.randn(num, rank, generator=g) @ loadings
    params += base
    for row in params:  # row by row: no second (num, dim) matrix, so peak RSS is the library's, not this helper's
        row += torch.randn(dim, generator=g) * 0.001
    return params


def median_seconds(fn, repeats: int, sync) -> tuple:
    """Median wall-clock and median CPU seconds (``time.process_time``, all threads of this process) of ``fn``.

    On a shared machine the wall time grows with the other processes' load; with one torch thread the CPU time is
    close to the wall time the call takes on an idle core."""
    fn()  # warm-up
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(dim: int, args) -> dict:
    """Times and peak memory at one D (run in its own process)."""
    from pdiff_hf import PDiffPipeline

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    layout = synthetic_layout(dim)
    config = PDiffConfig(autoencoder_type=args.autoencoder_type, ae_token_size=args.token_size)
    params = synthetic_checkpoints(args.num_checkpoints, dim)
    autoencoder = build_autoencoder(layout, config)
    autoencoder.fit_normalization(params)
    autoencoder.to(device).train()
    batch = autoencoder.normalize(params[: args.batch_size].to(device))
    del params
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=1e-3)

    def ae_step():
        loss = autoencoder_loss(autoencoder, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ae_s = median_seconds(ae_step, args.repeats, sync)
    autoencoder.eval()
    with torch.no_grad():
        latents = autoencoder.encode(batch)
    del batch, optimizer

    denoiser = build_denoiser(autoencoder, config).to(device).train()
    scheduler = noise_scheduler_for(denoiser)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-3)

    def denoiser_step():
        loss = denoiser_loss(denoiser, scheduler, latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    denoiser_s = median_seconds(denoiser_step, args.repeats, sync)
    del optimizer
    denoiser.eval()
    pipe = PDiffPipeline(autoencoder=autoencoder, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(0)

    def sample():
        out = pipe(num_models=args.num_models, num_inference_steps=args.steps, generator=generator).params
        assert out.shape == (args.num_models, dim)

    sample_s = median_seconds(sample, args.repeats, sync)
    result = {
        "D": dim,
        "autoencoder": type(autoencoder).__name__,
        "token_size": getattr(autoencoder.config, "token_size", None),
        "latent_shape": list(autoencoder.latent_shape),
        "ae_params": sum(p.numel() for p in autoencoder.parameters()),
        "ae_step_s": round(ae_s[0], 3),
        "denoiser_step_s": round(denoiser_s[0], 3),
        f"sample_{args.num_models}_s": round(sample_s[0], 2),
        "cpu_s": {"ae_step": round(ae_s[1], 3), "denoiser_step": round(denoiser_s[1], 3),
                  f"sample_{args.num_models}": round(sample_s[1], 2)},  # fmt: skip
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
    }
    if device.type == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def memory(dim: int, args) -> dict:
    """Peak RSS of ``fit_pdiff`` (``--memory_steps`` steps per stage) followed by sampling ``--num_models`` models,
    on ``--num_checkpoints`` synthetic checkpoints given as a tensor or as a memory-mapped checkpoint dataset."""
    import tempfile

    import datasets

    from pdiff_hf import fit_pdiff

    datasets.disable_progress_bars()
    layout = synthetic_layout(dim)
    config = PDiffConfig(ae_token_size=args.token_size, ae_steps=args.memory_steps, denoiser_steps=args.memory_steps,
                         lr_warmup_steps=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory == "dataset":  # written and reloaded in another process: this one only maps the file
            subprocess.run([sys.executable, os.path.abspath(__file__), "--_write_dataset", tmp, "--dims", str(dim),
                            "--num_checkpoints", str(args.num_checkpoints)], check=True)  # fmt: skip
            source = datasets.load_from_disk(tmp)
        else:
            source = synthetic_checkpoints(args.num_checkpoints, dim)
        start = time.perf_counter()
        pipe = fit_pdiff(source, layout, config, progress=False)
        fit_s = time.perf_counter() - start
        rss_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        pipe.set_progress_bar_config(disable=True)
        out = pipe(num_models=args.num_models, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))
        assert out.params.shape == (args.num_models, dim)
    return {"D": dim, "input": args.memory, "steps_per_stage": args.memory_steps, "fit_s": round(fit_s, 1),
            "peak_rss_gb_after_fit": round(rss_fit, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}  # fmt: skip


def compare(dim: int, args) -> list:
    """Held-out reconstruction MSE and s/step of the conv and the token autoencoder at one D."""
    from pdiff_hf.training.fit import _train

    params = synthetic_checkpoints(args.num_checkpoints + 20, dim)
    train, held_out = params[: args.num_checkpoints], params[args.num_checkpoints :]
    layout = synthetic_layout(dim)
    rows = []
    for kind in ("conv", "token"):
        config = PDiffConfig(
            autoencoder_type=kind, ae_patch_size=32 if dim >= 100_000 else 1, ae_steps=args.compare_steps,
            lr_warmup_steps=min(50, args.compare_steps // 10),
        )
        torch.manual_seed(0)
        autoencoder = build_autoencoder(layout, config)
        autoencoder.fit_normalization(train)
        data = autoencoder.normalize(train)
        start = time.perf_counter()
        _train(autoencoder, data, autoencoder_loss, config.ae_learning_rate, config.ae_steps,
               config.ae_train_batch_size, config, progress=False)  # fmt: skip
        seconds = (time.perf_counter() - start) / config.ae_steps
        with torch.no_grad():
            x = autoencoder.normalize(held_out)
            mse = float(((autoencoder(x).sample - x) ** 2).mean())
        rows.append({"D": dim, "autoencoder": kind, "latent_shape": list(autoencoder.latent_shape),
                     "params": sum(p.numel() for p in autoencoder.parameters()),
                     "held_out_mse": round(mse, 4), "s_per_step": round(seconds, 4)})  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--autoencoder_type", default="auto", choices=("auto", "conv", "token"))
    parser.add_argument("--token_size", type=int, default=None,
                        help="token autoencoder: entries per token (default: default_token_size(D)); e.g. 1024 at "
                             "D = 10^6 is the setting before 4096 became the default there")  # fmt: skip
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_models", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ sampling steps")
    parser.add_argument("--compare", action="store_true", help="conv against token autoencoder (see above)")
    parser.add_argument("--memory", choices=("tensor", "dataset"), default=None,
                        help="peak RSS of fit_pdiff + sampling from a tensor or a memory-mapped dataset (see above)")
    parser.add_argument("--memory_steps", type=int, default=20)
    parser.add_argument("--_write_dataset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compare_steps", type=int, default=300)
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: expected a CUDA device, found none")

    if args.compare:
        print(f"torch threads: {torch.get_num_threads()}, {args.num_checkpoints} train + 20 held-out checkpoints, "
              f"{args.compare_steps} steps at batch {PDiffConfig().ae_train_batch_size}")  # fmt: skip
        for dim in args.dims:
            for row in compare(dim, args):
                print(json.dumps(row), flush=True)
        return
    if args._write_dataset:
        from pdiff_hf import make_checkpoint_dataset

        dim = args.dims[0]
        make_checkpoint_dataset(synthetic_checkpoints(args.num_checkpoints, dim), synthetic_layout(dim)).save_to_disk(
            args._write_dataset
        )
        return
    if args._child:  # one D per process: its peak RSS is that D's alone
        print(json.dumps(memory(args.dims[0], args) if args.memory else measure(args.dims[0], args)))
        return
    print(f"device {args.device}, torch threads: {torch.get_num_threads()}, batch {args.batch_size}, medians of "
          f"{args.repeats} runs")  # fmt: skip
    for dim in args.dims:
        argv = [sys.executable, os.path.abspath(__file__), "--_child", "--dims", str(dim)]
        for name in ("repeats", "device", "autoencoder_type", "num_checkpoints", "batch_size", "num_models", "steps",
                     "token_size", "memory", "memory_steps"):  # fmt: skip
            if getattr(args, name) is not None:
                argv += [f"--{name}", str(getattr(args, name))]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            print(json.dumps({"D": dim, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
