#!/usr/bin/env python
"""Issue 10's whole-network target, checked on finished ``pdiff-hf demo --selection whole`` folders.

For each folder, the generated models are sampled again from ``DIR/pipeline`` exactly as the demo sampled them
(``--num-models``, ``--num-inference-steps`` and the seed from ``results.json``), evaluated as generated and after
BatchNorm recalibration on ``--recalibration_batches`` training batches of 128
(:func:`pdiff_hf.evaluation.recalibration.recalibrate_parameters`), and each set is measured against the target:

1. median test accuracy >= originals' median - 1 pp;
2. >= 90% of the models >= the originals' minimum;
3. median distance to the nearest training checkpoint >= 0.5 x the originals' nearest-neighbour distance
   (normalized space of the novelty analysis);
4. more models good and novel than the per-dimension Gaussian baseline (its fraction from the demo's own analysis;
   good / novel as defined there).

    OMP_NUM_THREADS=1 python benchmarks/bench_whole_target.py DIR [DIR ...]

Figures are printed, never asserted.
"""

import argparse
import json
import warnings
from pathlib import Path

import torch


def pipe_mean(params, model, layout, data) -> float:
    """Mean test accuracy (%) of ``params``: compared with the demo's ``results.json`` to confirm the resampling."""
    from pdiff_hf.evaluation.batched import evaluate_parameters

    return float(evaluate_parameters(model, layout, params, data.test_x, data.test_y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--recalibration_batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pdiff_hf import PDiffPipeline, checkpoint_params, load_checkpoint_dataset
    from pdiff_hf.evaluation.recalibration import recalibrate_parameters
    from pdiff_hf.novelty import analyze_novelty
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    print("| run | models | median (orig median) | >= orig min | NN distance ratio | good & novel (gaussian) | verdict |")
    print("|---|---|---|---|---|---|---|")
    for d in map(Path, args.dirs):
        results = json.loads((d / "results.json").read_text())
        cfg = results["config"]
        data = load_mnist1d(seed=cfg["data_seed"])
        model = MNIST1DCNN.from_pretrained(str(d / "target")).eval()
        pipe = PDiffPipeline.from_pretrained(str(d / "pipeline"))
        pipe.set_progress_bar_config(disable=True)
        ds = load_checkpoint_dataset(str(d / "checkpoints"))
        train = checkpoint_params(ds)
        layout = pipe.autoencoder.param_layout
        generated = pipe(
            num_models=cfg["num_models"], num_inference_steps=cfg["num_inference_steps"],
            generator=torch.Generator().manual_seed(cfg["seed"]),
        ).params  # fmt: skip
        same = "" if abs(float(pipe_mean(generated, model, layout, data)) - results["generated"]["mean"]) < 1e-3 else " (resampled models differ from the demo's)"
        recal = recalibrate_parameters(model, layout, generated, data.train_x, num_batches=args.recalibration_batches)
        orig = results["original"]
        gaussian = results["baselines"]["gaussian"]["good_and_novel_fraction"]
        name = f"{d.name} (seed {cfg['seed']}, branches {cfg.get('branches', 0)}){same}"
        for label, params in (("as generated", generated), (f"recalibrated ({args.recalibration_batches})", recal)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = analyze_novelty(model, layout, train, params, data, normalizer=pipe, num_baseline=0,
                                      seed=cfg["seed"], train_val_accuracy=ds["val_accuracy"])  # fmt: skip
            acc = rep.generated.test_accuracy
            ratio = float(rep.generated.nn_distance.median() / rep.original.nn_distance.median())
            gen = rep.summary["generated"]
            checks = [
                float(acc.median()) >= orig["median"] - 1 - 1e-9,
                float((acc >= orig["min"] - 1e-9).float().mean()) >= 0.9,
                ratio >= 0.5,
                gen["good_and_novel_fraction"] > gaussian,
            ]
            print(
                f"| {name} | {label} | {float(acc.median()):.2f} ({orig['median']:.2f}) {'ok' if checks[0] else 'NO'} | "
                f"{float((acc >= orig['min'] - 1e-9).float().mean()):.0%} (min {orig['min']:.2f}) "
                f"{'ok' if checks[1] else 'NO'} | {ratio:.3g}x {'ok' if checks[2] else 'NO'} | "
                f"{gen['good_and_novel_fraction']:.0%} ({gaussian:.0%}) {'ok' if checks[3] else 'NO'} | "
                f"{'MET' if all(checks) else 'not met'} |"
            )


if __name__ == "__main__":
    main()
