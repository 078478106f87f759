"""Benchmark the default demo and few-step sampling.

Runs ``pdiff-hf demo`` (the library function) ``--repeats`` times and prints the median seconds per stage and the
process's peak resident memory; then times sampling 100 models with 25-step DPM-Solver++ against 1000-step DDPM on
the last run's pipeline, with the generated mean test accuracy of each.

    python benchmarks/bench_demo.py --repeats 3 --output-dir /tmp/pdiff-bench

Figures are printed, never asserted: this is a benchmark, not a test.
"""

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="demo runs")
    p.add_argument("--sampling-repeats", type=int, default=3, help="timed repeats of each sampler")
    p.add_argument("--selection", default="norm", choices=["norm", "classifier"])
    p.add_argument("--num-models", type=int, default=100)
    p.add_argument("--output-dir", default=None, help="where demo folders go (default: a temporary folder)")
    p.add_argument("--skip-sampling", action="store_true")
    return p.parse_args()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(args):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    from pdiff_hf import PDiffPipeline, evaluate_parameters, summarize_accuracies
    from pdiff_hf.demos.demo import DemoConfig, run_demo, select_layout
    from pdiff_hf.novelty import tune_cpu_allocator
    from pdiff_hf.tasks import MNIST1DCNN, load_mnist1d

    tune_cpu_allocator()  # process-wide, as `pdiff-hf demo` does at startup (run_demo itself never does)

    root = Path(args.output_dir or tempfile.mkdtemp(prefix="pdiff-bench-"))
    runs = []
    for i in range(args.repeats):
        cfg = DemoConfig(output_dir=str(root / f"run{i}"), selection=args.selection, num_models=args.num_models)
        results = run_demo(cfg, log=lambda *_: None)
        runs.append(results)
        print(f"run {i}: total {results['timings_s']['total']:.1f} s, peak RSS {peak_rss_mib():.0f} MiB, "
              f"generated mean {results['generated']['mean']:.2f} vs original mean {results['original']['mean']:.2f}",
              flush=True)

    stages = list(runs[0]["timings_s"])
    print(f"\nDemo ({args.selection}, {args.repeats} runs, torch threads {torch.get_num_threads()}): median seconds")
    print("| stage | median s | min s | max s |\n|---|---|---|---|")
    for s in stages:
        vals = [r["timings_s"][s] for r in runs]
        print(f"| {s} | {statistics.median(vals):.2f} | {min(vals):.2f} | {max(vals):.2f} |")
    print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")
    quality = runs[-1]
    o, g = quality["original"], quality["generated"]
    print(f"last run: original best/mean/median {o['best']:.2f}/{o['mean']:.2f}/{o['median']:.2f}, "
          f"generated {g['best']:.2f}/{g['mean']:.2f}/{g['median']:.2f}")

    if args.skip_sampling:
        return
    last = root / f"run{args.repeats - 1}"
    pipe = PDiffPipeline.from_pretrained(str(last / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    model = MNIST1DCNN.from_pretrained(str(last / "target"))
    layout = select_layout(model, args.selection)
    data = load_mnist1d()
    samplers = {
        "dpm-solver++ 25": (DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), 25),
        "ddpm 1000": (DDPMScheduler.from_config(pipe.scheduler.config), 1000),
    }
    timing = {}
    print(f"\nSampling {args.num_models} models ({args.sampling_repeats} timed repeats each):")
    for name, (scheduler, steps) in samplers.items():
        pipe.scheduler = scheduler
        times, accs = [], []
        for r in range(args.sampling_repeats):
            t = time.perf_counter()
            params = pipe(num_models=args.num_models, num_inference_steps=steps, generator=torch.Generator().manual_seed(r)).params
            times.append(time.perf_counter() - t)
            accs.append(summarize_accuracies(evaluate_parameters(model, layout, params, data.test_x, data.test_y))["mean"])
        timing[name] = statistics.median(times)
        print(f"| {name} | median {timing[name]:.2f} s | generated mean accuracy {statistics.mean(accs):.2f}% "
              f"(per seed {', '.join(f'{a:.2f}' for a in accs)}) |", flush=True)
    ratio = timing["ddpm 1000"] / timing["dpm-solver++ 25"]
    print(f"DPM-Solver++ 25 steps is {ratio:.1f}x faster than DDPM 1000 steps")
    (root / "bench_summary.json").write_text(json.dumps({"runs": [r["timings_s"] for r in runs], "sampling_s": timing}, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(parse_args())
