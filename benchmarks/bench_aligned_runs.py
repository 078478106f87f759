#!/usr/bin/env python
"""Do independent runs average into a good network once aligned by weight matching? MNIST1DCNN on MNIST-1D, by width.

For each width in ``--channels``: trains ``--runs`` independent MNIST1DCNN runs (seeds ``--seed``, ``--seed + 1``,
…; ``train_classifier``, ``--epochs`` epochs each, own init and data order), aligns every run to the first
(:func:`pdiff_hf.alignment.weight_matching`, on the whole state dict: conv, BatchNorm weights and running statistics,
the classifier's channels x positions input axis), and prints the test accuracy of

* each run;
* the unaligned weight average of the runs (every tensor of the state dict averaged);
* the aligned weight average (weight matching on the parameters, the default) and, as a variant, the aligned
  average when the BatchNorm running statistics enter the matching cost too (``match_buffers=True``);
* the aligned average before recalibration;

the averages after BatchNorm recalibration (:func:`pdiff_hf.evaluation.recalibration.recalibrate_batchnorm`, on the
first ``--recalibration_batches`` batches of 128 training inputs), plus the seconds per alignment (weight matching +
applying the permutation), the number of weight-matching sweeps' outcome (units moved per group) and a check that the
aligned run computes the same function (max |logit difference| on the test split).

    OMP_NUM_THREADS=1 python benchmarks/bench_aligned_runs.py --channels 32 64 128 --epochs 10

Figures are printed, never asserted.
"""

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recalibration_batches", type=int, default=16, help="batches of 128 training inputs")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    from pdiff_hf.alignment import apply_permutation, spec_from_module, weight_matching
    from pdiff_hf.checkpoints.collect import train_classifier
    from pdiff_hf.evaluation.recalibration import recalibrate_batchnorm
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)

    @torch.no_grad()
    def accuracy(model) -> float:
        model.eval()
        return 100.0 * (model(data.test_x).argmax(1) == data.test_y).float().mean().item()

    def average(states):
        return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}

    def model_from(state):
        net = MNIST1DCNN(channels=channels)
        net.load_state_dict(state)
        return net.eval()

    def recalibrated(state) -> float:
        net = model_from(state)
        recalibrate_batchnorm(net, data.train_x, num_batches=args.recalibration_batches, batch_size=128)
        return accuracy(net)

    results = []
    for channels in args.channels:
        runs, train_seconds = [], []
        for r in range(args.runs):
            seed = args.seed + r
            torch.manual_seed(seed)
            net = MNIST1DCNN(channels=channels)
            start = time.perf_counter()
            train_classifier(net, data, epochs=args.epochs, seed=seed, progress=False)
            train_seconds.append(time.perf_counter() - start)
            runs.append(net.eval())
        states = [{k: v.clone() for k, v in net.state_dict().items()} for net in runs]

        spec = spec_from_module(runs[0], data.test_x[:2])
        aligned, aligned_buffers, align_seconds, moved, max_logit_diff = [states[0]], [states[0]], [], [], 0.0
        for net, state in zip(runs[1:], states[1:]):
            start = time.perf_counter()
            perms = weight_matching(spec, states[0], state, seed=args.seed)
            aligned_state = apply_permutation(spec, state, perms)
            align_seconds.append(time.perf_counter() - start)
            aligned.append(aligned_state)
            with_buffers = weight_matching(spec, states[0], state, seed=args.seed, match_buffers=True)
            aligned_buffers.append(apply_permutation(spec, state, with_buffers))
            moved.append({g: int((p != torch.arange(len(p))).sum()) for g, p in perms.items()})
            with torch.no_grad():
                diff = (model_from(aligned_state)(data.test_x) - net(data.test_x)).abs().max().item()
            max_logit_diff = max(max_logit_diff, diff)

        row = {
            "channels": channels,
            "runs": args.runs,
            "epochs": args.epochs,
            "run_accuracy": [round(accuracy(net), 2) for net in runs],
            "unaligned_average": round(accuracy(model_from(average(states))), 2),
            "unaligned_average_recalibrated": round(recalibrated(average(states)), 2),
            "aligned_average": round(accuracy(model_from(average(aligned))), 2),
            "aligned_average_recalibrated": round(recalibrated(average(aligned)), 2),
            "aligned_match_buffers_average_recalibrated": round(recalibrated(average(aligned_buffers)), 2),
            "seconds_per_alignment": round(sum(align_seconds) / len(align_seconds), 4),
            "seconds_per_run": round(sum(train_seconds) / len(train_seconds), 1),
            "units_moved": moved,
            "aligned_max_logit_difference": max_logit_diff,
        }
        results.append(row)
        mean_run = sum(row["run_accuracy"]) / len(runs)
        print(
            f"channels {channels:4d}: runs {row['run_accuracy']} (mean {mean_run:.2f}) | average of {args.runs}, "
            f"recalibrated: unaligned {row['unaligned_average_recalibrated']:.2f}, aligned "
            f"{row['aligned_average_recalibrated']:.2f} ({row['aligned_average_recalibrated'] - mean_run:+.2f} pp vs "
            f"the runs' mean; matching running statistics too: {row['aligned_match_buffers_average_recalibrated']:.2f}) "
            f"| not recalibrated: unaligned {row['unaligned_average']:.2f}, aligned "
            f"{row['aligned_average']:.2f} | {row['seconds_per_alignment']:.3f} s per alignment, "
            f"{row['seconds_per_run']:.1f} s per run | aligned run's max |logit diff| {max_logit_diff:.1e}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
