#!/usr/bin/env python
"""The held-out generalization test of every generator variant, per demo selection and seed.

    OMP_NUM_THREADS=1 python benchmarks/bench_generalization.py --selection norm --seeds 0 1 2 \
        --variants paper linear linear-flow --output gen_norm.json

For each (selection, seed): the demo's data and target (MNIST-1D, ``MNIST1DCNN`` trained 15 epochs), 200 checkpoints
collected with the demo's recipe, split by :func:`pdiff_hf.novelty.generalization.heldout_split` (every 10th held
out: 180 training, 20 held-out, exchangeable). Each variant is fitted on the 180 training checkpoints only, generates
100 models, and :func:`~pdiff_hf.novelty.generalization_network.evaluate_generalization` compares generated models, held-out
checkpoints, a training subsample and every baseline (noise, ``average_k16``, per-dimension ``gaussian``,
``pca_gaussian``, ``resampled``) in the training checkpoints' normalized units (the same for every variant).

Variants (``PDiffConfig`` overrides on top of the demo's sizes):

* ``paper``: p-diff's recipe (``PDiffConfig.paper()``): conv autoencoder with input / latent noise 0.001 / 0.1, DDPM;
* ``linear``: the whitened PCA code (``autoencoder_type="linear"``, 64 coefficients), DDPM;
* ``linear-flow``: the PCA code with the rectified-flow objective (``objective="flow_matching"``);
* ``conv-flow``: the paper's autoencoder with flow matching;
* any ``name:FIELD=VALUE,FIELD=VALUE`` on the command line.

Prints the three-line summary per variant and writes every figure as JSON with ``--output``;
``--table gen_norm.json gen_classifier.json ...`` prints the README's markdown tables from such files (no training).
"""

import argparse
import ast
import dataclasses
import json
import math
import sys
import time

import torch

VARIANTS = {
    "paper": {},  # PDiffConfig.paper() is the base of every variant
    "linear": {"autoencoder_type": "linear"},
    "linear-flow": {"autoencoder_type": "linear", "objective": "flow_matching"},
    "conv-flow": {"objective": "flow_matching"},
    "default": None,  # PDiffConfig() as shipped (whatever its defaults are), with the demo's sizes
}


def parse_variant(text: str):
    if ":" not in text:
        if text not in VARIANTS:
            raise SystemExit(f"unknown variant {text!r}; known: {sorted(VARIANTS)} or name:FIELD=VALUE,...")
        return text, VARIANTS[text]
    name, spec = text.split(":", 1)
    overrides = {}
    for item in spec.split(","):
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def config_for(dim: int, overrides, seed: int):
    from pdiff_hf import PDiffConfig

    patch = 2 ** math.ceil(math.log2(dim / 512)) if dim > 1024 else 1
    sizes = dict(ae_block_out_channels=(32, 64, 64, 64) if patch > 1 else (16, 32, 32), ae_patch_size=patch, seed=seed)
    if overrides is None:
        return dataclasses.replace(PDiffConfig(), **sizes)
    base = PDiffConfig.paper() if hasattr(PDiffConfig, "paper") else PDiffConfig()
    return dataclasses.replace(base, **sizes, **overrides)


def collect(selection: str, seed: int, num_checkpoints: int):
    from pdiff_hf import collect_checkpoints, train_classifier
    from pdiff_hf.demos.demo import COLLECT_LR, select_layout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)
    torch.manual_seed(seed)
    model = MNIST1DCNN()
    train_classifier(model, data, epochs=15, seed=seed, progress=False)
    layout = select_layout(model, selection)
    ds = collect_checkpoints(
        model, data, layout, num_checkpoints=num_checkpoints, learning_rate=COLLECT_LR[selection], seed=seed,
        evaluate=False, progress=False,
    )  # fmt: skip
    return model, layout, data, ds


def summarize(result: dict) -> dict:
    """The figures of one generalization result that the README table shows: per group, every comparison with the
    held-out checkpoints (value or ratio with its interval) and the test-accuracy median and spread."""
    out = {"verdict": result["verdict"], "decided_by": result["decided_by"], "summary": result["summary"]}
    for name, comparisons in result["comparisons"].items():
        out[name] = {key: {k: v for k, v in entry.items() if not isinstance(v, (list, dict))}
                     for key, entry in comparisons.items()}  # fmt: skip
    return out


def _ratio(entry) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{entry['value']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def print_tables(paths) -> None:
    """Markdown tables from ``--output`` files: one row per (selection, seed, variant), then every baseline's
    energy distance to the held-out checkpoints on the same split."""
    records = [r for path in paths for r in json.load(open(path, encoding="utf-8"))]
    print("| selection | seed | generator | verdict | energy (null 95%) | diversity | distance to mean | "
          "mean-model disagreement | test acc median ± std (held-out) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        res = r["result"]
        gen, held = res["comparisons"]["generated"], res["groups"]["heldout"]
        e = gen["energy_distance"]
        g = res["groups"]["generated"]
        print(f"| {r['selection']} | {r['seed']} | {r['variant']} | {res['verdict']} | {e['value']:.3f} "
              f"({e['threshold']:.3f}) | {_ratio(gen['diversity'])} | {_ratio(gen['distance_to_mean'])} | "
              f"{_ratio(gen['mean_model_disagreement'])} | {g['test_accuracy_median']:.2f} ± {g['test_accuracy_std']:.2f} "
              f"({held['test_accuracy_median']:.2f} ± {held['test_accuracy_std']:.2f}) |")  # fmt: skip
    print()
    # energy distance to the held-out checkpoints: each generator, then the baselines (the same for every generator
    # of a split); ✗ marks a value above the null's 95% quantile
    variants = list(dict.fromkeys(r["variant"] for r in records))
    names = ["training", "resampled", "noise_0.01", "noise_0.1", "average_k16", "gaussian", "pca_gaussian"]
    print("| selection | seed | " + " | ".join(variants + names) + " |")
    print("|---|---|" + "---|" * (len(variants) + len(names)))

    def cell(comp, name):
        e = (comp.get(name) or {}).get("energy_distance") or {}
        value = e.get("value")
        mark = "" if value is None or value <= e.get("threshold", float("inf")) else " ✗"
        return "–" if value is None else f"{value:.3f}{mark}"

    for key in dict.fromkeys((r["selection"], r["seed"]) for r in records):
        rows = {r["variant"]: r["result"]["comparisons"] for r in records if (r["selection"], r["seed"]) == key}
        first = next(iter(rows.values()))
        cells = [cell(rows[v], "generated") if v in rows else "–" for v in variants] + [cell(first, n) for n in names]
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", default=None, help="print the tables of these --output files and exit")
    parser.add_argument("--selection", default="norm", choices=["norm", "classifier", "whole"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["paper", "linear", "linear-flow"])
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--num_models", type=int, default=100)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.table:
        return print_tables(args.table)
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variants]

    from pdiff_hf import fit_pdiff
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.novelty.generalization import heldout_split
    from pdiff_hf.novelty.generalization_network import evaluate_generalization
    from pdiff_hf.novelty.generalization_report import summary_lines

    records = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        model, layout, data, ds = collect(args.selection, seed, args.num_checkpoints)
        params = checkpoint_params(ds)
        train_idx, held_idx = heldout_split(len(ds), run_ids=ds["run_id"], steps=ds["step"])
        train, held = params[train_idx], params[held_idx]
        print(f"# {args.selection} seed {seed}: D={layout.dim}, {len(train)} training / {len(held)} held-out "
              f"checkpoints ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        for name, overrides in variants:
            config = config_for(layout.dim, overrides, seed)
            start = time.perf_counter()
            pipe = fit_pdiff(train, layout, config, progress=False)
            fit_s = time.perf_counter() - start
            generator = torch.Generator().manual_seed(seed)
            generated = pipe(
                num_models=args.num_models, num_inference_steps=args.num_inference_steps, generator=generator
            ).params
            result = evaluate_generalization(model, layout, train, held, generated, data, seed=seed).to_dict()
            short = summarize(result)
            records.append({"selection": args.selection, "seed": seed, "variant": name, "fit_s": round(fit_s, 1),
                            "config": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in dataclasses.asdict(config).items()},
                            "summary": short, "result": result})  # fmt: skip
            print(f"## {name} (fit {fit_s:.0f} s)")
            for line in summary_lines(result):
                print("   " + line)
            sys.stdout.flush()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1, default=str)


if __name__ == "__main__":
    main()
