#!/usr/bin/env python
"""p-diff on a whole MLP (every weight and bias) of MNIST-1D: D ~ 10^5 or 10^6, end to end.

Stages, each timed (wall and CPU seconds): data (MNIST-1D generated locally), target (``MNIST1DMLP`` trained with
``train_classifier``), collect (``--num_checkpoints`` SGD checkpoints of the whole network, evaluated on validation
and test, saved with ``save_to_disk``), then in a fresh process (so that its peak RSS is training and sampling
alone): fit (``fit_pdiff`` on the checkpoint dataset from ``datasets.load_from_disk``, memory-mapped, with
``PDiffConfig`` defaults: ``autoencoder_type="auto"`` picks the token autoencoder here; ``--in_memory`` passes the
``(N, D)`` tensor of ``checkpoint_params`` instead, the comparison), sample (``--num_models`` models, 25
DPM-Solver++ steps), evaluate (validation and test accuracy of every generated model).

Prints test accuracy (percent) of originals and generated models, the gaps the issue's targets are stated in
(generated best - originals' best, generated median - originals' median), the generated model picked on
validation with its test accuracy, the distance of each generated model to its nearest original against the
originals' own nearest-neighbour distances, seconds per stage and peak RSS of both processes::

    OMP_NUM_THREADS=1 python benchmarks/bench_mlp_scale.py --hidden_sizes 512 128      # D = 87,946
    OMP_NUM_THREADS=1 python benchmarks/bench_mlp_scale.py --hidden_sizes 1024 1024    # D = 1,101,834

``collect + fit + sample + evaluate`` (the issue's timed span) is printed as ``pipeline_s`` (wall) and
``pipeline_cpu_s`` (CPU seconds of the two processes; on a shared machine the wall time grows with the load, the CPU
time far less). Figures are printed, never asserted.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden_sizes", type=int, nargs="+", default=[512, 128])
    p.add_argument("--target_epochs", type=int, default=15)
    p.add_argument("--num_checkpoints", type=int, default=200)
    p.add_argument("--collect_learning_rate", type=float, default=0.005)
    p.add_argument("--ae_steps", type=int, default=None, help="default: PDiffConfig's")
    p.add_argument("--denoiser_steps", type=int, default=None, help="default: PDiffConfig's")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="more PDiffConfig overrides, e.g. --set latent_noise=0.01 ae_token_size=512 (values parsed as JSON)")
    p.add_argument("--num_models", type=int, default=100)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in_memory", action="store_true", help="fit on the (N, D) tensor instead of the mapped dataset")
    p.add_argument("--work_dir", default=None, help="where the checkpoint dataset goes (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--_fit", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def summary(acc: torch.Tensor) -> dict:
    return {k: round(float(v), 2) for k, v in
            (("best", acc.max()), ("median", acc.median()), ("mean", acc.mean()), ("min", acc.min()))}  # fmt: skip


class Laps:
    """Wall and CPU seconds per stage, printed as they end."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def __call__(self, name):
        self.wall[name] = round(time.perf_counter() - self.start, 1)
        self.cpu[name] = round(time.process_time() - self.start_cpu, 1)
        self.start, self.start_cpu = time.perf_counter(), time.process_time()
        print(f"[{name}] {self.wall[name]} s wall, {self.cpu[name]} s CPU, peak RSS {peak_rss_gb()} GB", flush=True)


def nn_distances(a: torch.Tensor, b: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """Distance of each row of ``a`` to its nearest row of ``b`` (exact differences, not the matmul shortcut)."""
    d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values


def collect(args, work_dir: str) -> dict:
    from pdiff_hf import ParamLayout
    from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
    from pdiff_hf.tasks.mnist1d import load_mnist1d
    from pdiff_hf.tasks.mnist1d_mlp import MNIST1DMLP

    laps = Laps()
    data = load_mnist1d(seed=42)
    laps("data")
    torch.manual_seed(args.seed)
    model = MNIST1DMLP(hidden_sizes=tuple(args.hidden_sizes))
    train_classifier(model, data, epochs=args.target_epochs, seed=args.seed, progress=False)
    laps("target")
    layout = ParamLayout.from_module(model)
    dataset = collect_checkpoints(model, data, layout, num_checkpoints=args.num_checkpoints,
                                  learning_rate=args.collect_learning_rate, seed=args.seed, progress=False)  # fmt: skip
    dataset.save_to_disk(os.path.join(work_dir, "checkpoints"))
    model.save_pretrained(os.path.join(work_dir, "target"))
    laps("collect")
    return {"seconds": laps.wall, "cpu_seconds": laps.cpu, "peak_rss_gb": peak_rss_gb()}


def fit_sample_evaluate(args, work_dir: str) -> dict:
    import datasets

    from pdiff_hf import fit_pdiff, get_layout
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.checkpoints.rows import CheckpointRows
    from pdiff_hf.evaluation.batched import evaluate_parameters
    from pdiff_hf.tasks.mnist1d import load_mnist1d
    from pdiff_hf.tasks.mnist1d_mlp import MNIST1DMLP
    from pdiff_hf.training.config import PDiffConfig

    laps = Laps()
    data = load_mnist1d(seed=42)
    model = MNIST1DMLP.from_pretrained(os.path.join(work_dir, "target"))
    dataset = datasets.load_from_disk(os.path.join(work_dir, "checkpoints"))  # memory-mapped
    layout = get_layout(dataset)
    orig_val, orig_test = torch.tensor(dataset["val_accuracy"]), torch.tensor(dataset["test_accuracy"])
    laps("load")
    overrides = {k: getattr(args, k) for k in ("ae_steps", "denoiser_steps") if getattr(args, k) is not None}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = json.loads(value)
    config = PDiffConfig(seed=args.seed, **overrides)
    pipe = fit_pdiff(checkpoint_params(dataset) if args.in_memory else dataset, layout, config, progress=False)
    laps("fit")
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    generated = pipe(num_models=args.num_models, num_inference_steps=args.num_inference_steps,
                     generator=generator).params  # fmt: skip
    laps("sample")
    rss_after_sampling = peak_rss_gb()
    gen_val = evaluate_parameters(model, layout, generated, data.val_x, data.val_y)
    gen_test = evaluate_parameters(model, layout, generated, data.test_x, data.test_y)
    # novelty: nearest original of each generated vector, against the originals' own spacing (rows read in chunks)
    originals = torch.cat(list(CheckpointRows(dataset).row_chunks()))
    nn_gen, nn_orig = nn_distances(generated, originals, False), nn_distances(originals, originals, True)
    laps("evaluate")
    original, gen = summary(orig_test), summary(gen_test)
    return {
        "D": layout.dim,
        "autoencoder": type(pipe.autoencoder).__name__,
        "config_overrides": overrides,
        "autoencoder_config": {k: pipe.autoencoder.config[k] for k in ("token_size", "hidden_dim", "latent_channels")
                               if k in pipe.autoencoder.config},  # fmt: skip
        "latent_shape": list(pipe.autoencoder.latent_shape),
        "fit_input": "tensor (checkpoint_params)" if args.in_memory else "memory-mapped checkpoint dataset",
        "original_test": original,
        "generated_test": gen,
        "best_gap_pp": round(gen["best"] - original["best"], 2),
        "median_gap_pp": round(gen["median"] - original["median"], 2),
        "val_selected": {"original_test": round(float(orig_test[orig_val.argmax()]), 2),
                         "generated_test": round(float(gen_test[gen_val.argmax()]), 2)},  # fmt: skip
        "nn_distance_median": {"generated_to_originals": round(float(nn_gen.median()), 4),
                               "originals_to_each_other": round(float(nn_orig.median()), 4)},  # fmt: skip
        "seconds": laps.wall,
        "cpu_seconds": laps.cpu,
        "peak_rss_gb_fit_and_sample": rss_after_sampling,
        "peak_rss_gb": peak_rss_gb(),
    }


def main(args):
    import datasets

    datasets.disable_progress_bars()
    if args._fit:
        print(json.dumps(fit_sample_evaluate(args, args._fit)), flush=True)
        return
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        collected = collect(args, work_dir)
        argv = [sys.executable, os.path.abspath(__file__), "--_fit", work_dir] + sys.argv[1:]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the fit process failed with exit code {proc.returncode}")
        fitted = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = ("collect", "fit", "sample", "evaluate")
    seconds = {**collected["seconds"], **fitted.pop("seconds")}
    cpu = {**collected["cpu_seconds"], **fitted.pop("cpu_seconds")}
    result = {
        **fitted,
        "hidden_sizes": args.hidden_sizes,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "pipeline_s": round(sum(seconds[k] for k in stages), 1),
        "pipeline_cpu_s": round(sum(cpu[k] for k in stages), 1),
        "peak_rss_gb_collect": collected["peak_rss_gb"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(parse_args())
