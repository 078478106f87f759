#!/usr/bin/env python
"""Start-up time: ``import torch``, ``import pdiff_hf`` and ``pdiff-hf --help``, each in fresh subprocesses.

``import pdiff_hf`` is lazy (``pdiff_hf/__init__.py``) and ``pdiff-hf --help`` only builds the argument parser, so
both should cost a fraction of ``import torch``, which every real use pays anyway. Prints the median wall time of
``--repeats`` runs of each command (interleaved, so a busy machine slows all three alike) and its ratio to
``import torch`` measured in the same run::

    python benchmarks/bench_import.py --repeats 5

Figures are printed, never asserted (tests/test_init.py checks which modules get imported instead).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def commands():
    cli = shutil.which("pdiff-hf", path=os.path.dirname(sys.executable)) or shutil.which("pdiff-hf")
    help_cmd = [cli, "--help"] if cli else [sys.executable, "-m", "pdiff_hf.cli", "--help"]
    return {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'import pdiff_hf'": [sys.executable, "-c", "import pdiff_hf"],
        "pdiff-hf --help": help_cmd,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cmds = commands()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in cmds.values():  # warm the file cache: the first run of a cold interpreter is not what users see
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(f"median of {args.repeats} fresh subprocesses ({sys.executable})")
    print()
    print("| command | seconds (median) | min | max | / import torch |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{name}` | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | {med / torch_s:.2f} |")


if __name__ == "__main__":
    main()
