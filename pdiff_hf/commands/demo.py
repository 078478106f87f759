"""``pdiff-hf demo``: the whole method on MNIST-1D, no downloads."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # Defaults are DemoConfig's, applied in run(): a flag left at None is not passed on. Importing pdiff_hf.demos.demo here
    # would load torch, diffusers and datasets for every `pdiff-hf --help`.
    p = subparsers.add_parser(
        "demo",
        help="run p-diff end to end on MNIST-1D (collect, train, generate, evaluate, report)",
        description="Run p-diff end to end on MNIST-1D generated locally and write a report folder.",
    )
    p.add_argument("--output-dir", required=True, help="folder for target/, checkpoints/, pipeline/, report.md, results.json")
    p.add_argument("--selection", choices=["norm", "classifier", "whole"], default=None,
                   help="norm: last two BatchNorm layers (D=128, default); classifier: final linear layer (D=12,810); "
                        "whole: every parameter plus the BatchNorm running statistics (D=23,690)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--data-seed", type=int, default=None, help="MNIST-1D generator seed")
    p.add_argument("--target-epochs", type=int, default=None)
    p.add_argument("--num-checkpoints", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None, help="SGD steps between saved checkpoints")
    p.add_argument("--collect-learning-rate", type=float, default=None,
                   help="SGD step size on the selection while collecting (default: 0.2 norm, 0.05 classifier, 0.005 whole)")
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--denoiser-steps", type=int, default=None)
    p.add_argument("--num-models", type=int, default=None, help="models to generate")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch threads (1 is usually fastest for these small models)")
    p.add_argument("--heldout-checkpoints", type=int, default=None,
                   help="checkpoints held out, spread evenly through each run, for the reconstruction gate and the "
                        "held-out generalization test (default 20; 0: none)")
    p.add_argument("--branches", type=int, default=None,
                   help="collect from this many branches of an early target (collect_branches; default 0: one run)")
    p.add_argument("--trunk-epochs", type=int, default=None, help="epochs of the shared target with --branches (5)")
    p.add_argument("--branch-epochs", type=int, default=None, help="epochs of each branch with --branches (10)")
    p.add_argument("--recipe", choices=["pdiff", "aligned-runs"], default=None,
                   help="pdiff: checkpoints of one target (default); aligned-runs (--selection whole): --runs independent "
                        "runs aligned to one another by weight matching (MergeMany), their last checkpoints, the linear autoencoder")
    p.add_argument("--runs", type=int, default=None, help="independent runs with --recipe aligned-runs (8)")
    p.add_argument("--channels", type=int, default=None,
                   help="width of the MNIST1DCNN target (default 32; aligned runs need 128 or more to average well)")
    p.add_argument("--num-processes", type=int, default=None,
                   help="processes training the runs with --recipe aligned-runs (default 1; 2 on two cores)")
    p.add_argument("--autoencoder-type", choices=["auto", "learned", "conv", "token", "linear"], default=None,
                   help="the generator's autoencoder (default auto: the linear code; 'learned' is p-diff's recipe)")
    p.add_argument("--objective", choices=["ddpm", "flow_matching"], default=None,
                   help="the denoiser's training objective (default ddpm)")
    p.add_argument("--recalibration-batches", type=int, default=None,
                   help="also measure the generated models after BatchNorm recalibration on this many training "
                   "batches (--selection whole)")
    p.add_argument("--no-novelty", dest="novelty", action="store_false", help="skip baselines and novelty analysis")
    p.add_argument("--conditional", action="store_true",
                   help="one conditional pipeline for several MNIST-1D tasks (labels shifted by t) sharing a frozen "
                        "backbone, the head generated per task; --num-checkpoints and --num-models are per task, "
                        "--target-epochs trains the backbone")
    p.add_argument("--num-tasks", type=int, default=None, help="--conditional: number of tasks (default 4)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=None,
                   help="--conditional: classifier-free guidance scales to sweep (default 1 2 4; the reported one is "
                        "selected on validation)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "conditional", False):
        return run_conditional(args)
    from ..demos.demo import DemoConfig, run_demo
    from ..novelty import format_accuracy_table, tune_cpu_allocator

    options = dict(
        selection=args.selection,
        seed=args.seed,
        data_seed=args.data_seed,
        target_epochs=args.target_epochs,
        num_checkpoints=args.num_checkpoints,
        save_every=args.save_every,
        collect_learning_rate=args.collect_learning_rate,
        ae_steps=args.ae_steps,
        denoiser_steps=args.denoiser_steps,
        num_models=args.num_models,
        num_inference_steps=args.num_inference_steps,
        num_threads=args.num_threads,
        heldout_checkpoints=args.heldout_checkpoints,
        branches=args.branches,
        trunk_epochs=args.trunk_epochs,
        branch_epochs=args.branch_epochs,
        recalibration_batches=args.recalibration_batches,
        recipe=args.recipe,
        runs=args.runs,
        channels=args.channels,
        num_processes=args.num_processes,
        autoencoder_type=args.autoencoder_type,
        objective=args.objective,
    )
    given = {name: value for name, value in options.items() if value is not None}
    config = DemoConfig(output_dir=args.output_dir, novelty=args.novelty, **given)
    config.validate()
    tune_cpu_allocator()  # process-wide, so the command sets it, never the library (pdiff_hf.novelty.allocator)
    results = run_demo(config)
    spread = results["original_spread"]
    print()
    summary = results.get("generalization", {}).get("summary", [])  # the held-out generalization test first
    if summary:
        print("\n".join(summary) + "\n")
    print(format_accuracy_table(results))
    print(
        f"\noriginals' spread: best - min accuracy {spread['best_minus_min_accuracy']:.2f} pp, mean nearest-neighbour "
        f"distance {spread['mean_nn_distance_normalized']:.4g} (normalized) / {spread['mean_nn_distance_raw']:.4g} (raw), "
        f"median prediction agreement with the nearest checkpoint {spread['median_nn_prediction_agreement']:.4f}"
    )
    for line in results.get("verdict", []):
        print(f"- {line}")
    print(f"\nresults: {args.output_dir}/results.json  report: {args.output_dir}/report.md")
    return 0


# options of the unconditional demo that have no meaning with --conditional
_UNCONDITIONAL_ONLY = ("selection", "save_every", "recipe", "runs", "channels", "num_processes", "autoencoder_type",
                       "objective")


def run_conditional(args: argparse.Namespace) -> int:
    """``pdiff-hf demo --conditional``: :func:`pdiff_hf.demos.conditional_demo.run_conditional_demo`."""
    from ..demos.conditional_demo import ConditionalDemoConfig, run_conditional_demo
    from ..demos.conditional_report import (
        diversity_lines,
        per_task_lines,
        solved_lines,
        sweep_lines,
        target_lines,
    )
    from ..errors import DemoConfigError
    from ..novelty import tune_cpu_allocator

    given_other = [f"--{n.replace('_', '-')}" for n in _UNCONDITIONAL_ONLY if getattr(args, n, None) is not None]
    if given_other:
        raise DemoConfigError(f"expected no {', '.join(given_other)} with --conditional (the head is the selection), found them")
    options = dict(
        num_tasks=args.num_tasks,
        seed=args.seed,
        data_seed=args.data_seed,
        backbone_epochs=args.target_epochs,
        checkpoints_per_task=args.num_checkpoints,
        collect_learning_rate=args.collect_learning_rate,
        ae_steps=args.ae_steps,
        denoiser_steps=args.denoiser_steps,
        models_per_task=args.num_models,
        num_inference_steps=args.num_inference_steps,
        num_threads=args.num_threads,
        guidance_scales=tuple(args.guidance_scales) if args.guidance_scales else None,
    )
    given = {name: value for name, value in options.items() if value is not None}
    config = ConditionalDemoConfig(output_dir=args.output_dir, novelty=args.novelty, **given)
    config.validate()
    tune_cpu_allocator()  # process-wide, so the command sets it, never the library
    results = run_conditional_demo(config)
    print()
    tables = (per_task_lines(results), diversity_lines(results), sweep_lines(results), solved_lines(results),
              target_lines(results["targets"]))  # fmt: skip
    for lines in tables:
        print("\n".join(lines) + "\n")
    print(f"results: {args.output_dir}/results.json  report: {args.output_dir}/report.md")
    return 0
