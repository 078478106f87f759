"""Flow matching vs the DDPM objective on the default demo's data (``pdiff-hf demo`` settings).

Per seed, as the demo does: MNIST-1D (data seed 42), a MNIST1DCNN trained 15 epochs, 220 checkpoints of its last two
BatchNorm layers (D = 128, SGD lr 0.2, one per step), every 11th held out (200 training, 20 held-out, exchangeable).
Then, for each objective, ``fit_pdiff`` on the 200 training checkpoints with the demo's ``PDiffConfig`` (only
``objective`` differs), 100 models sampled with the objective's default sampler in 25 steps (DPM-Solver++ for DDPM,
FlowMatchEulerDiscreteScheduler for flow matching), and the held-out generalization test
(:func:`pdiff_hf.novelty.generalization_network.evaluate_generalization`: generated vs held-out vs training vs baselines).

Printed per seed and objective: generated test accuracy median and standard deviation against the held-out and the
training checkpoints', the energy distance to the held-out checkpoints with its null threshold, the diversity and
distance-to-mean ratios (generated / held-out) with 95% intervals, the verdict, and the fit time; then a table over
seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_objective.py --seeds 0 1 2                              # the demo's default generator
    OMP_NUM_THREADS=1 python benchmarks/bench_objective.py --seeds 0 1 2 --autoencoder-type learned  # p-diff's conv autoencoder

Figures are printed, never asserted: this is a benchmark, not a test.
"""

import argparse
import dataclasses
import statistics
import time

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="demo seeds (target, collection, fit, sampling)")
    p.add_argument("--objectives", nargs="+", default=["ddpm", "flow_matching"], choices=["ddpm", "flow_matching"])
    p.add_argument("--num-models", type=int, default=100)
    p.add_argument("--num-inference-steps", type=int, default=25)
    p.add_argument("--denoiser-steps", type=int, default=None, help="override the demo's denoiser steps (600)")
    p.add_argument("--autoencoder-type", default="auto", choices=["auto", "learned", "linear"],
                   help="the demo's --autoencoder-type: 'auto' (the default: the linear code with 200 checkpoints) or "
                   "'learned' (p-diff's conv autoencoder)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the demo's setting)")
    return p.parse_args(argv)


def collect(seed: int, autoencoder_type: str = "auto"):
    """The demo's target, checkpoints and held-out split for ``seed``."""
    from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.demos.demo import DemoConfig, select_layout, split_heldout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    demo = DemoConfig(seed=seed, autoencoder_type=autoencoder_type)
    data = load_mnist1d(seed=demo.data_seed)
    torch.manual_seed(seed)
    model = MNIST1DCNN()
    train_classifier(model, data, epochs=demo.target_epochs, seed=seed, progress=False)
    layout = select_layout(model, demo.selection)
    collected = collect_checkpoints(
        model, data, layout, num_checkpoints=demo.num_checkpoints + demo.heldout_checkpoints, seed=seed,
        progress=False, save_every=demo.save_every, learning_rate=demo.collect_lr, evaluate=False,
    )  # fmt: skip
    train, heldout = split_heldout(collected, demo.num_checkpoints, demo.num_checkpoints)
    return demo, data, model, layout, train, checkpoint_params(heldout)


def measure(objective: str, seed: int, demo, data, model, layout, train, heldout, args) -> dict:
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.novelty.generalization_network import GENERATED, HELDOUT, evaluate_generalization
    from pdiff_hf.training.fit import fit_pdiff

    config = dataclasses.replace(demo.pdiff_config(layout.dim), objective=objective)
    if args.denoiser_steps is not None:
        config = dataclasses.replace(config, denoiser_steps=args.denoiser_steps)
    start = time.perf_counter()
    pipe = fit_pdiff(train, layout, config, progress=False)
    fit_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    generated = pipe(
        num_models=args.num_models, num_inference_steps=args.num_inference_steps,
        generator=torch.Generator().manual_seed(seed),
    ).params  # fmt: skip
    result = evaluate_generalization(
        model, layout, checkpoint_params(train, check=False), heldout, generated, data, normalizer=pipe, seed=seed
    )
    acc = result.test_accuracy
    comparisons = result.comparisons[GENERATED]
    energy = comparisons["energy_distance"]
    return {
        "seed": seed, "objective": objective, "scheduler": type(pipe.scheduler).__name__, "fit_s": fit_s,
        "autoencoder": type(pipe.autoencoder).__name__,
        "gen_median": float(acc[GENERATED].median()), "gen_std": float(acc[GENERATED].std()),
        "held_median": float(acc[HELDOUT].median()), "held_std": float(acc[HELDOUT].std()),
        "train_median": float(acc["training_all"].median()), "train_std": float(acc["training_all"].std()),
        "energy": energy["value"], "threshold": energy["threshold"],
        "diversity": comparisons.get("diversity"), "distance_to_mean": comparisons.get("distance_to_mean"),
        "verdict": result.verdict, "decided_by": result.decided_by, "summary": result.summary,
    }  # fmt: skip


def _ratio(entry) -> str:
    if not entry:
        return "n/a"
    low, high = entry.get("low"), entry.get("high")
    value = entry.get("value")
    fmt = lambda x: "inf" if x is None else f"{x:.2f}"  # noqa: E731
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def main(args) -> list:
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        demo, data, model, layout, train, heldout = collect(seed, args.autoencoder_type)
        print(f"seed {seed}: target + {len(train)} training / {heldout.shape[0]} held-out checkpoints of "
              f"{layout.describe()} in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        for objective in args.objectives:
            row = measure(objective, seed, demo, data, model, layout, train, heldout, args)
            rows.append(row)
            print(f"  {objective} ({row['autoencoder']}, {row['scheduler']}, {args.num_inference_steps} steps): fit {row['fit_s']:.0f} s; "
                  f"test accuracy median/std generated {row['gen_median']:.2f}/{row['gen_std']:.2f}, held-out "
                  f"{row['held_median']:.2f}/{row['held_std']:.2f}, training {row['train_median']:.2f}/"
                  f"{row['train_std']:.2f}; energy distance to held-out {row['energy']:.3f} (null 95%: "
                  f"{row['threshold']:.3f}); diversity ratio {_ratio(row['diversity'])}, distance-to-mean ratio "
                  f"{_ratio(row['distance_to_mean'])}; verdict {row['verdict']}", flush=True)  # fmt: skip
            for line in row["summary"]:
                print(f"    {line}")
    print(f"\n| seed | objective | gen median | gen std | held-out median | held-out std | training median | "
          f"training std | energy (null 95%) | diversity ratio | verdict | fit s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['objective']} | {r['gen_median']:.2f} | {r['gen_std']:.2f} | {r['held_median']:.2f} "
              f"| {r['held_std']:.2f} | {r['train_median']:.2f} | {r['train_std']:.2f} | {r['energy']:.3f} "
              f"({r['threshold']:.3f}) | {_ratio(r['diversity'])} | {r['verdict']} | {r['fit_s']:.0f} |")  # fmt: skip
    for objective in args.objectives:
        mine = [r for r in rows if r["objective"] == objective]
        ratio = statistics.median(r["gen_std"] / r["held_std"] for r in mine if r["held_std"] > 0)
        gap = statistics.median(r["gen_median"] - r["held_median"] for r in mine)
        print(f"{objective}: over seeds {[r['seed'] for r in mine]}, median accuracy-spread ratio generated / held-out "
              f"{ratio:.2f}, median gap of the accuracy medians {gap:+.2f} pp, verdicts "
              f"{[r['verdict'] for r in mine]}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main(parse_args())
