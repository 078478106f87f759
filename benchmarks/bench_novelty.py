"""Benchmark of :func:`pdiff_hf.novelty.analyze_novelty` in a realistic MNIST-1D setting.

Setting: MNIST-1D, an MNIST1DCNN trained briefly, 200 checkpoints of its last two BatchNorm layers (D=128) collected
with ``collect_checkpoints``, a small ``fit_pdiff`` pipeline and 100 generated models; then all metrics for the
generated models, the 200 originals and the six default baselines (100 models each): 901 models on the 1000 test
examples plus validation accuracy of the generated models.

    python benchmarks/bench_novelty.py [--repeats 5] [--num-threads 1] [--cache-dir /tmp/bench_novelty]

Prints the median wall-clock and CPU seconds over the repeats (and the share spent in batched forward passes). It
is a benchmark, not a test: nothing is asserted. CPU seconds are less sensitive than wall-clock seconds to other
processes on a shared machine. Like the ``pdiff-hf`` commands, it raises glibc malloc's thresholds at startup
(:func:`pdiff_hf.novelty.tune_cpu_allocator`; ``--no-tune-allocator`` leaves them alone to measure the difference).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def build_setting(args):
    import datasets

    from pdiff_hf import (
        ParamLayout,
        PDiffConfig,
        PDiffPipeline,
        checkpoint_params,
        collect_checkpoints,
        fit_pdiff,
    )
    from pdiff_hf.checkpoints.collect import train_classifier
    from pdiff_hf.tasks import MNIST1DCNN, load_mnist1d

    data = load_mnist1d()
    cache = Path(args.cache_dir) if args.cache_dir else None
    if cache is not None and (cache / "pipeline").exists():
        model = MNIST1DCNN.from_pretrained(cache / "target")
        dataset = datasets.load_from_disk(str(cache / "checkpoints"))
        pipe = PDiffPipeline.from_pretrained(cache / "pipeline")
        print(f"setting loaded from {cache}")
    else:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = MNIST1DCNN()
        train_classifier(model, data, epochs=args.target_epochs, seed=0)
        layout = ParamLayout.from_module(model, last_norm_layers=2)
        dataset = collect_checkpoints(model, data, layout, num_checkpoints=200, learning_rate=args.collect_lr, seed=0)
        config = PDiffConfig(ae_steps=args.train_steps, denoiser_steps=args.train_steps)
        pipe = fit_pdiff(checkpoint_params(dataset), layout, config, progress=False)
        print(f"setting built in {time.perf_counter() - t0:.1f} s")
        if cache is not None:
            model.save_pretrained(cache / "target")
            dataset.save_to_disk(str(cache / "checkpoints"))
            pipe.save_pretrained(cache / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    generated = pipe(num_models=args.num_models, num_inference_steps=25, generator=torch.Generator().manual_seed(0)).params
    return model, pipe, dataset, data, generated


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--num-models", type=int, default=100)
    parser.add_argument("--target-epochs", type=int, default=3)
    parser.add_argument("--collect-lr", type=float, default=0.2, help="SGD step on the BatchNorm selection (the demo's)")
    parser.add_argument("--train-steps", type=int, default=300, help="autoencoder and denoiser steps")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per vmapped call (default: analyze_novelty's)")
    parser.add_argument("--models-per-chunk", type=int, default=None, help="models per vmapped call (default: analyze_novelty's)")
    parser.add_argument("--no-tune-allocator", action="store_true", help="leave glibc malloc's thresholds alone")
    parser.add_argument("--cache-dir", default=None, help="save the setting here, or load it if already there")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)

    from pdiff_hf import checkpoint_params, get_layout, novelty
    from pdiff_hf.novelty import metrics

    if not args.no_tune_allocator:
        novelty.tune_cpu_allocator()  # process-wide: the entry point decides, as pdiff-hf demo / evaluate do

    model, pipe, dataset, data, generated = build_setting(args)
    layout = get_layout(dataset)
    train = checkpoint_params(dataset)
    train_val = torch.tensor(dataset["val_accuracy"])

    chunking = {k: v for k, v in (("batch_size", args.batch_size), ("models_per_chunk", args.models_per_chunk)) if v}
    forward_s = []
    real_predict = metrics.predict_with_parameters

    def timed_predict(*a, **k):
        t = time.perf_counter()
        out = real_predict(*a, **k)
        forward_s[-1] += time.perf_counter() - t
        return out

    metrics.predict_with_parameters = timed_predict
    wall, cpu = [], []
    report = None
    try:
        for i in range(args.repeats):
            forward_s.append(0.0)
            w, c = time.perf_counter(), os.times()
            report = novelty.analyze_novelty(
                model, layout, train, generated, data, normalizer=pipe, seed=0, train_val_accuracy=train_val, **chunking
            )
            wall.append(time.perf_counter() - w)
            end = os.times()
            cpu.append(end.user - c.user + end.system - c.system)
            print(
                f"repeat {i + 1}: {wall[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU ({end.user - c.user:.2f} user + "
                f"{end.system - c.system:.2f} system), {forward_s[-1]:.2f} s in forward passes",
                flush=True,
            )
    finally:
        metrics.predict_with_parameters = real_predict

    n_models = sum(g.count for g in report.groups.values()) + 1
    print()
    print(report.table())
    print()
    print("\n".join(report.verdict))
    print()
    print(
        f"analyze_novelty: {len(train)} checkpoints (D={layout.dim}), {len(generated)} generated, "
        f"{len(report.baselines)} baselines; {n_models} models x {len(data.test_y)} test examples; "
        f"{args.num_threads} thread(s); torch {torch.__version__}; malloc thresholds raised: "
        f"{novelty.allocator_tuned()}"
    )
    print(f"median wall seconds: {statistics.median(wall):.2f}  (min {min(wall):.2f}, max {max(wall):.2f}, {args.repeats} repeats)")
    print(f"median CPU seconds:  {statistics.median(cpu):.2f}")
    print(f"median share in batched forward passes: {statistics.median(f / w for f, w in zip(forward_s, wall)):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
