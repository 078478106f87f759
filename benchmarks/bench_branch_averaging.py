#!/usr/bin/env python
"""Are weight-space averages of a whole-network collection good networks? Branches vs independent runs, MNIST-1D.

Collects whole-network checkpoints of MNIST1DCNN (every parameter plus the BatchNorm statistics, as
``pdiff-hf demo --selection whole``) two ways, with the same number of runs and checkpoints:

* branches: :func:`pdiff_hf.checkpoints.collect_runs.collect_branches` (one trunk of ``--trunk_epochs``, then ``--runs`` branches of
  ``--branch_epochs`` with their own data orders);
* independent: ``--runs`` networks trained from their own random init for ``--trunk_epochs + --branch_epochs``
  epochs (:func:`pdiff_hf.checkpoints.collect_runs.collect_from_runs` with a ``reset`` that re-initializes everything, which warns);

and prints, for each, the checkpoints' median test accuracy, the test accuracy of the average of all checkpoints
and the worst average of two runs' means (:func:`pdiff_hf.checkpoints.run_mixing.check_weight_averaging`, on the test
split here only to report: the check itself uses whatever split it is given), and the pairwise error-set IoU.

    OMP_NUM_THREADS=1 python benchmarks/bench_branch_averaging.py --runs 4

Figures are printed, never asserted.
"""

import argparse
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--checkpoints_per_run", type=int, default=10)
    parser.add_argument("--trunk_epochs", type=int, default=5)
    parser.add_argument("--branch_epochs", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=0.005, help="collection SGD step (the demo's, whole)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    from pdiff_hf.checkpoints.collect import train_classifier
    from pdiff_hf.checkpoints.collect_runs import collect_branches, collect_from_runs
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.checkpoints.run_mixing import check_weight_averaging
    from pdiff_hf.demos.demo import select_layout
    from pdiff_hf.evaluation.batched import predict_with_parameters
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)
    test = (data.test_x, data.test_y)
    common = dict(learning_rate=args.learning_rate, evaluate=False, progress=False)

    def report(name, model, layout, ds, seconds):
        params = checkpoint_params(ds)
        check = check_weight_averaging(model, layout, params, test, run_ids=ds["run_id"], warn=False)
        preds = predict_with_parameters(model, layout, params, data.test_x)
        errors = (preds != data.test_y).float()
        inter = errors @ errors.T
        size = errors.sum(1)
        iou = inter / (size[:, None] + size[None] - inter).clamp_min(1)
        off = ~torch.eye(len(params), dtype=torch.bool)
        print(
            f"| {name} | {len(params)} | {check['checkpoint_median_accuracy']:.2f} | {check['average_accuracy']:.2f} | "
            f"{check['run_pair_average_accuracy']:.2f} | {float(iou[off].mean()):.3f} | {check['mixed']} | {seconds:.0f} |"
        )

    print(f"MNIST1DCNN whole network, {args.runs} runs x {args.checkpoints_per_run} checkpoints, seed {args.seed}")
    print("| collection | checkpoints | median acc | average of all | worst average of 2 runs | mean pairwise IoU | "
          "flagged mixed | seconds |")
    print("|---|---|---|---|---|---|---|---|")

    torch.manual_seed(args.seed)
    model = MNIST1DCNN()
    layout = select_layout(model, "whole")
    t0 = time.perf_counter()
    ds = collect_branches(
        model, data, layout, num_branches=args.runs, checkpoints_per_branch=args.checkpoints_per_run,
        trunk_epochs=args.trunk_epochs, branch_epochs=args.branch_epochs, seed=args.seed, **common,
    )  # fmt: skip
    report("branches of one early checkpoint", model, layout, ds, time.perf_counter() - t0)

    def reset(m, seed):  # an independent run: new init, then the full training
        torch.manual_seed(seed)
        for module in m.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        train_classifier(m, data, epochs=args.trunk_epochs + args.branch_epochs, seed=seed, progress=False)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collect_from_runs warns about exactly this collection
        ds = collect_from_runs(
            model, data, layout, seeds=[args.seed + 1000 * (r + 1) for r in range(args.runs)], reset=reset,
            num_checkpoints=args.checkpoints_per_run, **common,
        )  # fmt: skip
    report("independent runs (no weight matching)", model, layout, ds, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
