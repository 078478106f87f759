#!/usr/bin/env python
"""Peak memory (max RSS) of ``training/train_autoencoder.py`` on a large synthetic checkpoint dataset.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_memory.py --num_checkpoints 200 --dim 1000000 \
        --max_train_steps 3 --train_batch_size 32 [--script other_train_autoencoder.py ...]

Builds the dataset once with ``make_checkpoint_dataset(...).save_to_disk`` (``bench_scale``'s synthetic low-rank
checkpoints and four-tensor layout) unless ``--dataset`` already exists, then runs every ``--script`` (by default
this repository's ``training/train_autoencoder.py``) ``--repeats`` times, each in a fresh process, and prints the
median peak RSS of each. A second ``--script`` (e.g. an older copy of the script) is the baseline to compare with:
the ratio to the first script is printed. The raw checkpoints are ``N * D * 4`` bytes (800 MB at 200 x 10^6).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_dataset(path: str, num: int, dim: int) -> None:
    """The synthetic checkpoint dataset ``(num, dim)`` at ``path`` (a save_to_disk folder)."""
    sys.path.insert(0, HERE)
    from bench_scale import synthetic_checkpoints, synthetic_layout

    from pdiff_hf import make_checkpoint_dataset

    make_checkpoint_dataset(synthetic_checkpoints(num, dim), synthetic_layout(dim)).save_to_disk(path)


def peak_rss_mb(script: str, dataset: str, args) -> float:
    """Run ``script`` on ``dataset`` in a fresh process; its peak resident set size in MiB (``ru_maxrss``)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, script, "--dataset_name", dataset, "--output_dir", os.path.join(out, "ae"),
               "--max_train_steps", str(args.max_train_steps), "--train_batch_size", str(args.train_batch_size),
               "--lr_warmup_steps", "0", "--checkpointing_steps", str(10**9), "--report_to", "none"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{stderr.decode()[-3000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--dim", type=int, default=10**6)
    parser.add_argument("--dataset", type=str, default=None, help="save_to_disk folder (made if missing)")
    parser.add_argument("--script", action="append", default=None,
                        help="training script(s) to measure; the first is compared with the others")
    parser.add_argument("--max_train_steps", type=int, default=3)
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    dataset = args.dataset or os.path.join(tempfile.gettempdir(), f"pdiff-bench-{args.num_checkpoints}x{args.dim}")
    if not os.path.exists(dataset):
        make_dataset(dataset, args.num_checkpoints, args.dim)
    scripts = args.script or [os.path.join(ROOT, "training", "train_autoencoder.py")]
    raw_mb = args.num_checkpoints * args.dim * 4 / 2**20
    print(f"dataset {dataset}: {args.num_checkpoints} x {args.dim} float32 = {raw_mb:.0f} MiB raw")
    first = None
    for script in scripts:
        runs = [peak_rss_mb(script, dataset, args) for _ in range(args.repeats)]
        median = statistics.median(runs)
        first = first or median
        ratio = f", {median / first:.2f}x the first script" if script != scripts[0] else ""
        print(f"{script}: peak RSS median {median:.0f} MiB over {len(runs)} run(s) "
              f"({', '.join(f'{r:.0f}' for r in runs)}){ratio}")


if __name__ == "__main__":
    main()
