#!/usr/bin/env python
"""Building and reading a checkpoint dataset: the Arrow column pdiff_hf builds against ``datasets``' own helpers.

``make_checkpoint_dataset`` builds the fixed-length float32 ``params`` column from one Arrow buffer, and
``checkpoint_params`` reads it back as one Arrow array; the same features (``List(Value("float32"), length=D)``)
come out of ``datasets.Dataset.from_dict(..., features=Features(...))`` and ``with_format("torch")``, which this
benchmark times side by side (medians of ``--repeats`` runs, ratios in the same run)::

    OMP_NUM_THREADS=1 python benchmarks/bench_checkpoint_dataset.py --dims 10000 100000 --repeats 3

Figures are printed, never asserted.
"""

import argparse
import statistics
import time

import datasets
import numpy as np
import torch
from torch import nn

from pdiff_hf import ParamLayout, checkpoint_params, make_checkpoint_dataset


def timed(fn, repeats):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    print(f"{args.num_checkpoints} checkpoints, medians of {args.repeats} runs, torch threads {torch.get_num_threads()}")
    print("| D | build: pdiff_hf | build: from_dict + Features | ratio | read: pdiff_hf | read: with_format('torch') | ratio |")
    print("|---|---|---|---|---|---|---|")
    for dim in args.dims:
        layout = ParamLayout.from_module(nn.Linear(dim - 1, 1))  # weight (1, D-1) + bias (1,): D entries
        params = torch.randn(args.num_checkpoints, dim)
        features = datasets.Features({"params": datasets.Sequence(datasets.Value("float32"), length=dim)})
        ours, ds = timed(lambda: make_checkpoint_dataset(params, layout), args.repeats)
        theirs, ds2 = timed(lambda: datasets.Dataset.from_dict({"params": params.numpy()}, features=features), args.repeats)
        assert ds.features["params"] == ds2.features["params"]
        read_ours, a = timed(lambda: checkpoint_params(ds), args.repeats)
        read_theirs, b = timed(lambda: ds2.with_format("torch", columns=["params"])[:]["params"], args.repeats)
        assert torch.equal(a, b) and torch.equal(a, params)
        print(f"| {dim:,} | {ours:.3f} s | {theirs:.3f} s | {theirs / ours:.1f}x | {read_ours:.3f} s | "
              f"{read_theirs:.3f} s | {read_theirs / read_ours:.1f}x |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
