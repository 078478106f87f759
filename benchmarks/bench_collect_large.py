#!/usr/bin/env python
"""Collect a whole large network: a config-built transformers ResNet-18 (11.2 M values with its BatchNorm statistics).

    OMP_NUM_THREADS=1 python benchmarks/bench_collect_large.py --num_checkpoints 200 --cache_dir /tmp/pdiff-collect

Before ``pdiff_hf.checkpoints.writer``, ``collect_checkpoints`` held every row in a Python list and then stacked them:
200 x 11.2 M float32 rows asked ``torch.stack`` for 8.9 GB after minutes of training. Now the need (``N * D * 4``
bytes) is known before any step: above ``--max_in_memory_bytes`` (default 2 GiB) the rows stream to an Arrow file in
``--cache_dir`` and the dataset memory-maps it. Prints rows, D, the storage chosen, seconds and the peak RSS of the
process (``ru_maxrss``); the data are synthetic 32 x 32 images (no download).
"""

import argparse
import json
import resource
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_in_memory_bytes", type=int, default=None)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--save_to", default=None, help="also save_to_disk the dataset there")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import ResNetConfig, ResNetForImageClassification

    from pdiff_hf import ParamLayout, collect_checkpoints
    from pdiff_hf.evaluation.data import ClassificationSplits

    config = ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", num_labels=10
    )
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    layout = ParamLayout.from_module(model, include_buffers=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    data = ClassificationSplits(x[:192], y[:192], x[192:224], y[192:224], x[224:], y[224:])

    start = time.perf_counter()
    ds = collect_checkpoints(
        model, data, layout, num_checkpoints=args.num_checkpoints, learning_rate=0.01, batch_size=args.batch_size,
        evaluate=False, progress=False, max_in_memory_bytes=args.max_in_memory_bytes, cache_dir=args.cache_dir,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    files = [f["filename"] for f in ds.cache_files]
    if args.save_to:
        ds.save_to_disk(args.save_to)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "rows": len(ds), "D": layout.dim, "row_bytes_total_GiB": round(len(ds) * layout.dim * 4 / 2**30, 2),
        "storage": "disk (memory-mapped)" if files else "memory", "files": files, "seconds": round(seconds, 1),
        "peak_rss_MiB": round(peak), "threads": args.threads,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
