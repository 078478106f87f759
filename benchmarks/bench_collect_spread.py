#!/usr/bin/env python
"""How different are collected checkpoints? Spread of a collection on MNIST-1D per SGD step size.

Trains one MNIST1DCNN (``train_classifier`` defaults), then for each ``--learning_rate`` restarts from it and runs
:func:`pdiff_hf.collect_checkpoints` (library defaults otherwise: the last two BatchNorm layers, 200 checkpoints, one
per step, momentum 0.9; ``--selection`` as in ``pdiff-hf demo``). Prints per step size:

* test accuracy of the checkpoints: std and best - min, in percentage points;
* median prediction agreement (test split) of each checkpoint with its nearest other checkpoint in weight space
  (per-dimension standardized, as in the novelty analysis); 1.0 means the collection is functional copies;
* how many of the checkpoints make distinct test predictions (as a set of 1000 predicted labels).

    python benchmarks/bench_collect_spread.py --learning_rate 0.001 0.01 0.05 0.1 0.2

Figures are printed, never asserted.
"""

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learning_rate", type=float, nargs="+", default=[0.001, 0.01, 0.05, 0.1, 0.2])
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--target_epochs", type=int, default=None, help="default: train_classifier's default")
    parser.add_argument("--selection", choices=["norm", "classifier", "whole"], default="norm",
                        help="what is collected, as in `pdiff-hf demo --selection` (default: the last two BatchNorm layers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.demos.demo import select_layout
    from pdiff_hf.evaluation.batched import predict_with_parameters
    from pdiff_hf.models.normalization import compute_stats, normalize
    from pdiff_hf.tasks import get_task

    task = get_task("mnist1d")
    data = task.load_data()
    torch.manual_seed(args.seed)
    model = task.build_model(data)
    t0 = time.perf_counter()
    epochs = {} if args.target_epochs is None else {"epochs": args.target_epochs}
    train_classifier(model, data, seed=args.seed, progress=False, **epochs)
    print(f"target trained in {time.perf_counter() - t0:.1f} s")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    layout = select_layout(model, args.selection)
    print(f"selection: {layout.describe()}; {args.num_checkpoints} checkpoints, {args.num_threads} torch thread(s)")
    print()
    print("| learning_rate | test acc mean | std (pp) | best - min (pp) | median NN agreement | distinct predictions | seconds |")
    print("|---|---|---|---|---|---|---|")
    for lr in args.learning_rate:
        model.load_state_dict(base)
        t0 = time.perf_counter()
        ds = collect_checkpoints(
            model, data, layout, num_checkpoints=args.num_checkpoints, learning_rate=lr, seed=args.seed, progress=False
        )
        seconds = time.perf_counter() - t0
        acc = torch.tensor(ds["test_accuracy"])
        params = checkpoint_params(ds)
        mask = layout.log_space_mask()
        mean, std = compute_stats(params, mask)
        z = normalize(params, mean, std, mask)
        d = torch.cdist(z, z)
        d.fill_diagonal_(float("inf"))
        nearest = d.argmin(1)
        preds = predict_with_parameters(model, layout, params, data.test_x)  # (N, n_test)
        agreement = (preds == preds[nearest]).float().mean(1)
        distinct = torch.unique(preds, dim=0).shape[0]
        print(
            f"| {lr:g} | {acc.mean():.2f} | {acc.std():.3f} | {acc.max() - acc.min():.2f} | "
            f"{agreement.median():.4f} | {distinct} / {len(ds)} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
