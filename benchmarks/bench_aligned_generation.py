#!/usr/bin/env python
"""Generating whole networks from independent runs aligned by permutation, against recalibrated baselines.

    OMP_NUM_THREADS=1 python benchmarks/bench_aligned_generation.py --runs 16 --heldout_runs 4 --channels 64 \
        --epochs 15 --checkpoints_per_run 5 --variants linear --json aligned_generation.json

1. **Runs**: ``--runs + --heldout_runs`` independent runs of ``MNIST1DCNN(channels=C)`` on MNIST-1D (seeds ``--seed``,
   ``--seed + 1``, …; every module re-initialized per run), each trained ``--epochs`` epochs and then collected for
   ``--checkpoints_per_run`` SGD steps on the whole network (lr ``--collect_lr``, the demo's 0.005 for ``whole``), all
   with :func:`~pdiff_hf.checkpoints.collect_runs.collect_from_runs` ``(align=True, alignment=--alignment)``: every
   run aligned to the average of the others (``merge_many``, the default) or to run 0 (``first``) by weight
   matching. Whole networks with their BatchNorm statistics (``include_buffers=True``).
2. **Held-out runs**: the last ``--heldout_runs`` runs are never fitted on (whole runs, not checkpoints of a training
   run: "new" means new functions). They are what an ideal generator would produce: new runs of the same recipe.
3. **Fit** p-diff on the training runs' checkpoints per ``--variants``: ``linear`` (the whitened PCA code,
   ``autoencoder_type="linear"``, DDPM), ``linear-flow`` (the same with ``objective="flow_matching"``), ``paper``
   (``PDiffConfig.paper()``: p-diff's conv autoencoder and noise augmentation); 100 models each (DPM-Solver, 25
   steps; the flow variant its Euler scheduler).
4. **Baselines**, built from the same training checkpoints: ``aligned_average`` (the weight average of the K training
   runs' final checkpoints: one model), ``interpolation`` (``(1 - a) x_i + a x_j`` of two distinct training runs'
   final checkpoints, ``a ~ U(0, 1)``), ``average_k16`` (means of 16 random training checkpoints), ``gaussian``
   (per-dimension) and ``pca_gaussian`` (full covariance in the checkpoints' PCA subspace) in the training
   checkpoints' normalized units (:func:`pdiff_hf.novelty.make_baselines`).
5. **Recalibration**: every generated and baseline model gets its BatchNorm statistics re-estimated on the same
   ``--recalibration_batches`` batches of 128 training inputs
   (:func:`pdiff_hf.evaluation.recalibration.recalibrate_parameters`). The runs' checkpoints are scored as trained
   (their recalibrated accuracy is printed beside).
6. **Figures** per group, with 95% bootstrap intervals over models (2,000 resamples): median test accuracy, share
   above the originals' minimum (the training checkpoints' lowest test accuracy), median max-IoU of test errors with
   the training checkpoints (:mod:`pdiff_hf.novelty.metrics`' definition: IoU of error sets, 1 for two error-free
   models), and the good-and-novel share: good = test accuracy >= the training checkpoints' 10th percentile; novel =
   max-IoU below the training runs' median pairwise IoU (pairs of checkpoints of two different training runs).
   Because a model's max-IoU is a maximum over K runs while the threshold is a median over pairs, a new independent
   run is rarely "novel" by that threshold; the held-out runs' share shows what it gives a perfect generator, and a
   second threshold (``novel_loo``: below the median over training runs of each run's max-IoU with the *other*
   training runs — as new as a training run is to the rest) is printed too.
7. **Held-out generalization test** (:func:`pdiff_hf.novelty.generalization_network.evaluate_generalization`, ``--no-generalization``
   skips it): recalibrated training checkpoints vs recalibrated held-out runs vs recalibrated generated models and
   baselines, with the run ids, so that the energy distance's null holds out whole runs as this split does.

Prints the total minutes and the seconds per alignment (weight matching of one run's final state to run 0's plus
permuting its checkpoints). Figures are printed, never asserted.

Measured at the issue's scale with MergeMany (``--runs 32 --heldout_runs 4 --channels 128 --variants linear``, 1
torch thread, another benchmark beside it; ``--seed 0``: runs 0-35, 20.5 min, 0.52 s per aligned run; ``--seed 40``:
runs 40-75, 20.7 min, 0.64 s), median test accuracy after recalibration with 95% intervals, seed 0 / seed 40:
held-out runs 97.20 / 97.00; p-diff linear 90.75 [90.55, 90.95] / 91.90 [91.70, 92.30]; aligned average 92.10 /
92.70; average_k16 92.30 / 93.00; pca_gaussian 90.10 / 91.05; interpolation 96.60 / 96.70 (57% / 44% above the
originals' minimum, good-and-novel 0%, by the loo threshold 9% / 7%). p-diff: 0% above the minimum, 0% good and
novel (both thresholds); beaten by no baseline. With each run matched to run 0 (``--alignment first``, seed 0):
p-diff 87.6%, aligned average 89.2%.

The tables below are from before MergeMany, with every run aligned to run 0.

Measured on the shared 2-core machine (load average 9-12, 1 torch thread; seed 0; the command above with
``--variants linear linear-flow paper``: 32.4 min in all, 31 s per run, 0.06 s per alignment, fits 51 / 38 / 320 s,
recalibration of every group 261 s). D = 67,850; originals (80 training checkpoints): median 97.50%, min 96.90%,
good >= 97.00%, novel: max-IoU < 0.448 (loo threshold 0.583). After recalibration, median test accuracy / share
above the originals' minimum / median max-IoU / good-and-novel % (loo threshold), 95% intervals:

=================  ======================  ===========  ====================  ========  ===========
group              median acc              > min        median max-IoU        g&n       g&n (loo)
=================  ======================  ===========  ====================  ========  ===========
held-out runs      97.40 [97.35, 97.50]    85 [70,100]  0.579 [0.572, 0.581]  0         60 [40, 80]
p-diff linear      71.90 [69.75, 75.20]    0            0.080 [0.073, 0.092]  0         0
p-diff linear-flow 73.45 [70.90, 76.30]    0            0.086 [0.079, 0.095]  0         0
p-diff paper       80.65 [79.90, 81.30]    0            0.110 [0.107, 0.112]  0         0
aligned_average    83.80 (one model)       0            0.133                 0         0
interpolation      94.95 [92.90, 95.50]    23 [15, 31]  0.372 [0.276, 0.423]  0         1 [0, 3]
average_k16        84.20 [83.35, 85.00]    0            0.136 [0.128, 0.143]  0         0
gaussian           47.35 [45.90, 49.15]    0            0.046 [0.045, 0.048]  0         0
pca_gaussian       69.45 [65.80, 71.65]    0            0.073 [0.067, 0.080]  0         0
=================  ======================  ===========  ====================  ========  ===========

At 128 channels (``--channels 128``, ``--variants linear linear-flow``; 35.4 min, 70 s per run, 0.16 s per
alignment; D = 217,610; originals: median 97.40%, min 96.90%, good >= 97.10%, novel: max-IoU < 0.548, loo 0.704):

=================  ======================  ===========  ====================  ========  ===========
group              median acc              > min        median max-IoU        g&n       g&n (loo)
=================  ======================  ===========  ====================  ========  ===========
held-out runs      96.90 [96.90, 96.95]    75 [55, 95]  0.667 [0.649, 0.697]  0         0
p-diff linear      90.35 [89.80, 90.90]    0            0.243 [0.223, 0.254]  0         0
p-diff linear-flow 91.15 [90.50, 91.70]    0            0.258 [0.240, 0.269]  0         0
aligned_average    90.10 (one model)       0            0.240                 0         0
interpolation      95.95 [95.35, 96.30]    27 [19, 36]  0.511 [0.458, 0.588]  0         0
average_k16        90.40 [90.25, 90.60]    0            0.248 [0.240, 0.251]  0         0
gaussian           68.40 [66.40, 69.90]    0            0.074 [0.071, 0.079]  0         0
pca_gaussian       89.00 [88.15, 90.00]    0            0.215 [0.197, 0.225]  0         0
=================  ======================  ===========  ====================  ========  ===========

Again at 128 channels with runs 20-39 (``--seed 20``, on an idle machine: 14.2 min in all, 16 s per run, 0.04 s per
alignment; originals: median 97.30%, min 96.50%, good >= 96.80%): held-out runs 97.60% (g&n 0%, loo 65% [45, 85]),
p-diff linear 90.65% [90.35, 91.10] (2% above the minimum, g&n 0%, loo 0%), linear-flow 91.30% [90.85, 91.70]
(2%, 0%, loo 1% [0, 3]), aligned average 92.00%, interpolation 96.50% [96.00, 96.80] (52% above the minimum, g&n
2% [0, 5], loo 9% [4, 15]), average_k16 91.90%, gaussian 68.70%, pca_gaussian 89.05%; generalization test MEMORIZING
for both variants.

p-diff beats no baseline on the good-and-novel share (0% for every group, p-diff included): at 64 channels and K = 16 the aligned runs' span is not a
low-loss region (their aligned average: 28.7% before recalibration, 83.8% after), every sample of it (p-diff's
included) is far worse than a run, and "novel" (low max-IoU) comes only with being bad. At 128 channels the
aligned average of 16 runs recalibrates to 90.1% (61.1% before) and p-diff's samples sit on it: the same accuracy
and max-IoU as the aligned average, ``average_k16`` and ``pca_gaussian``, 6-7 pp below the runs; only interpolations
of two runs come near the runs (95.95%), without being novel. The held-out generalization test says OFF-DISTRIBUTION
for both linear variants and MEMORIZING for the paper recipe at 64 channels, MEMORIZING for both at 128 channels.
"""

import argparse
import dataclasses
import json
import time

import torch

VARIANTS = {
    "linear": {"autoencoder_type": "linear"},
    "linear-flow": {"autoencoder_type": "linear", "objective": "flow_matching"},
    "paper": {},
}
CONFIDENCE = 0.95
RESAMPLES = 2000


def pdiff_config(name: str, num_train: int, seed: int, args):
    """``PDiffConfig.paper()`` with the variant's overrides; the linear code keeps the most components that fit
    ``latent_channels * length <= N - 1`` (an even length, for the denoiser's one downsampling)."""
    from pdiff_hf import PDiffConfig

    overrides = dict(VARIANTS[name], seed=seed)
    if args.ae_steps is not None:
        overrides["ae_steps"] = args.ae_steps
    if args.denoiser_steps is not None:
        overrides["denoiser_steps"] = args.denoiser_steps
    config = PDiffConfig.paper(**overrides)
    if config.autoencoder_type == "linear":
        length = min(args.linear_latent_length, (num_train - 1) // config.latent_channels)
        length -= length % 2
        if length < 2:
            raise SystemExit(f"expected at least {2 * config.latent_channels + 1} training checkpoints for the linear code, "
                             f"found {num_train}")  # fmt: skip
        config = dataclasses.replace(config, ae_linear_latent_length=length)
    return config


def iou_matrix(errors_a: torch.Tensor, errors_b: torch.Tensor) -> torch.Tensor:
    """``(A, B)`` IoU of error sets (rows of 0/1 floats); two empty error sets have IoU 1."""
    inter = errors_a @ errors_b.T
    union = errors_a.sum(1)[:, None] + errors_b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def bootstrap(values: torch.Tensor, statistic, generator: torch.Generator):
    """``(point, low, high)``: ``statistic`` of ``values`` and its percentile interval over resampled models."""
    v = values.double()
    point = float(statistic(v[None]))
    if v.numel() < 2:
        return point, point, point
    idx = torch.randint(0, v.numel(), (RESAMPLES, v.numel()), generator=generator)
    stats = statistic(v[idx])
    alpha = (1 - CONFIDENCE) / 2
    return point, float(stats.quantile(alpha)), float(stats.quantile(1 - alpha))


def median(x: torch.Tensor) -> torch.Tensor:
    return x.quantile(0.5, dim=-1)


def share(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * x.mean(dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16, help="K training runs")
    parser.add_argument("--heldout_runs", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--checkpoints_per_run", type=int, default=5)
    parser.add_argument("--collect_lr", type=float, default=0.005)
    parser.add_argument("--alignment", default="merge_many", choices=["merge_many", "first"],
                        help="collect_from_runs' alignment: every run to the average of the others, or to run 0")
    parser.add_argument("--variants", nargs="+", default=["linear"], choices=sorted(VARIANTS))
    parser.add_argument("--linear_latent_length", type=int, default=16)
    parser.add_argument("--ae_steps", type=int, default=None)
    parser.add_argument("--denoiser_steps", type=int, default=None)
    parser.add_argument("--num_models", type=int, default=100)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--recalibration_batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-generalization", dest="generalization", action="store_false")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--num_processes", type=int, default=1,
                        help="processes training the runs (collect_from_runs(num_processes=...)); 2 on two cores")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.runs < 2 or args.heldout_runs < 0 or args.checkpoints_per_run < 1:
        raise SystemExit("expected --runs >= 2, --heldout_runs >= 0 and --checkpoints_per_run >= 1")
    torch.set_num_threads(args.num_threads)
    total_start = time.perf_counter()

    from pdiff_hf import fit_pdiff
    from pdiff_hf.checkpoints.collect_runs import collect_from_runs, get_alignment
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.evaluation.batched import accuracy_from_predictions, predict_with_parameters
    from pdiff_hf.evaluation.recalibration import recalibrate_parameters
    from pdiff_hf.layout import ParamLayout
    from pdiff_hf.novelty import StatsNormalizer, make_baselines
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)
    K, H, k = args.runs, args.heldout_runs, args.checkpoints_per_run

    # 1. runs, aligned (collect_from_runs times the alignment and records it in the dataset)
    torch.manual_seed(args.seed)
    model = MNIST1DCNN(channels=args.channels)
    layout = ParamLayout.from_module(model, include_buffers=True)
    start = time.perf_counter()
    ds = collect_from_runs(
        model, data, layout, seeds=[args.seed + r for r in range(K + H)], align=True, num_checkpoints=k,
        train_epochs=args.epochs, learning_rate=args.collect_lr, evaluate=False, progress=False,
        alignment=args.alignment, num_processes=args.num_processes,
    )  # fmt: skip
    collect_s = time.perf_counter() - start
    params = checkpoint_params(ds)
    run_ids = torch.tensor(ds["run_id"])
    steps = torch.tensor(ds["step"])
    train, held = params[run_ids < K], params[run_ids >= K]
    train_runs = run_ids[run_ids < K]
    final = torch.stack([params[(run_ids == r) & (steps == steps[run_ids == r].max())][0] for r in range(K)])
    alignment = get_alignment(ds)
    align_s = alignment["seconds"]
    print(f"# {K} training + {H} held-out runs of MNIST1DCNN(channels={args.channels}), D={layout.dim}, {args.epochs} "
          f"epochs + {k} checkpoints each: {collect_s / 60:.1f} min ({collect_s / (K + H):.0f} s per run); alignment "
          f"({args.alignment}) of all runs {align_s:.1f} s ({align_s / (K + H - 1):.2f} s per run, permuting {k} "
          f"checkpoints each included), groups {alignment['groups']}", flush=True)  # fmt: skip

    # 2. the originals: thresholds from the training runs
    def predict(p: torch.Tensor) -> torch.Tensor:
        return predict_with_parameters(model, layout, p, data.test_x, batch_size=250, models_per_chunk=10)

    def recalibrate(p: torch.Tensor) -> torch.Tensor:
        return recalibrate_parameters(model, layout, p, data.train_x, num_batches=args.recalibration_batches)

    labels = data.test_y
    train_preds = predict(train)
    train_err = (train_preds != labels).float()
    train_acc = accuracy_from_predictions(train_preds, labels).double()
    pair_iou = iou_matrix(train_err, train_err)
    other_run = train_runs[:, None] != train_runs[None, :]
    novel_iou = float(pair_iou[other_run].double().median())
    loo = torch.where(other_run, pair_iou, torch.full_like(pair_iou, -1.0)).max(1).values
    novel_loo_iou = float(loo.double().median())
    good_acc = float(train_acc.quantile(0.1))
    min_acc = float(train_acc.min())
    print(f"# thresholds: originals' minimum {min_acc:.2f}%, good >= {good_acc:.2f}% (10th percentile), novel: max-IoU "
          f"< {novel_iou:.4f} (training runs' median pairwise IoU), novel_loo: < {novel_loo_iou:.4f} (median over "
          f"training checkpoints of the max-IoU with the other training runs)", flush=True)  # fmt: skip

    # 3. generated models
    raw, fit_seconds = {}, {}
    for name in args.variants:
        config = pdiff_config(name, len(train), args.seed, args)
        start = time.perf_counter()
        pipe = fit_pdiff(train, layout, config, progress=False)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(args.seed)
        out = pipe(num_models=args.num_models, num_inference_steps=args.num_inference_steps, generator=generator)
        fit_seconds[name] = time.perf_counter() - start
        raw[f"p-diff {name}"] = out.params.float()
        print(f"# fitted {name} ({config.autoencoder_type} autoencoder"
              + (f", {config.latent_channels}x{config.ae_linear_latent_length} components" if config.autoencoder_type == "linear" else "")
              + f", {config.objective}) and generated {args.num_models} in {fit_seconds[name]:.0f} s", flush=True)  # fmt: skip

    # 4. baselines
    gen = torch.Generator().manual_seed(args.seed)
    norm = StatsNormalizer.from_checkpoints(train, layout)
    made = make_baselines(norm.normalize(train), args.num_models, noise_levels=(), average_k=16, gaussian=True,
                          generator=gen, pca_gaussian=True)  # fmt: skip
    pairs = torch.stack([torch.randperm(K, generator=gen)[:2] for _ in range(args.num_models)])
    alpha = torch.rand(args.num_models, 1, generator=gen)
    raw["aligned_average"] = final.double().mean(0, keepdim=True).float()
    raw["interpolation"] = (1 - alpha) * final[pairs[:, 0]] + alpha * final[pairs[:, 1]]
    for name, (z, _) in made.items():
        raw[name] = norm.denormalize(z)

    # 5. recalibrate, score, novelty
    start = time.perf_counter()
    recalibrated = {name: recalibrate(p) for name, p in raw.items()}
    recal_train, recal_held = recalibrate(train), recalibrate(held) if H else None
    recal_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(args.seed)
    rows, predictions = {}, {}

    def measure(name: str, preds: torch.Tensor, extra=None) -> None:
        err = (preds != labels).float()
        acc = accuracy_from_predictions(preds, labels).double()
        max_iou = iou_matrix(err, train_err).max(1).values.double()
        good = acc >= good_acc - 1e-9
        row = {
            "count": int(acc.numel()),
            "median_accuracy": bootstrap(acc, median, g),
            "share_above_min": bootstrap((acc > min_acc - 1e-9).double(), share, g),
            "median_max_iou": bootstrap(max_iou, median, g),
            "good_and_novel": bootstrap((good & (max_iou < novel_iou)).double(), share, g),
            "good_and_novel_loo": bootstrap((good & (max_iou < novel_loo_iou)).double(), share, g),
        }
        rows[name] = {**row, **(extra or {})}

    held_preds = predict(held) if H else None
    if H:
        measure("held-out runs", held_preds, {"recalibrated_median_accuracy": float(
            accuracy_from_predictions(predict(recal_held), labels).double().median())})  # fmt: skip
    recal_train_preds = predict(recal_train)
    for name in raw:
        predictions[name] = predict(recalibrated[name])
        before = float(accuracy_from_predictions(predict(raw[name]), labels).double().median())
        measure(name, predictions[name], {"median_accuracy_before_recalibration": before})
    train_row = {"median_accuracy": float(train_acc.median()), "recalibrated_median_accuracy": float(
        accuracy_from_predictions(recal_train_preds, labels).double().median())}  # fmt: skip

    def fmt(t, digits=2):
        return f"{t[0]:.{digits}f} [{t[1]:.{digits}f}, {t[2]:.{digits}f}]"

    print(f"\ntraining checkpoints ({len(train)}): median test accuracy {train_row['median_accuracy']:.2f}% "
          f"(recalibrated {train_row['recalibrated_median_accuracy']:.2f}%), min {min_acc:.2f}%")  # fmt: skip
    print("group (after recalibration) | n | median acc % | share > originals' min % | median max-IoU | "
          "good & novel % | good & novel (loo threshold) % | median acc before recalibration")
    for name, row in rows.items():
        print(f"{name} | {row['count']} | {fmt(row['median_accuracy'])} | {fmt(row['share_above_min'], 0)} | "
              f"{fmt(row['median_max_iou'], 3)} | {fmt(row['good_and_novel'], 0)} | {fmt(row['good_and_novel_loo'], 0)} | "
              f"{row.get('median_accuracy_before_recalibration', row.get('recalibrated_median_accuracy', float('nan'))):.2f}"
              + (" (held-out runs: recalibrated)" if name == "held-out runs" else ""))  # fmt: skip

    verdicts = {}
    baselines = [n for n in raw if not n.startswith("p-diff")]
    for name in (n for n in raw if n.startswith("p-diff")):
        for key in ("good_and_novel", "good_and_novel_loo"):
            ours = rows[name][key]
            beaten = [b for b in baselines if ours[1] > rows[b][key][2]]
            verdicts[f"{name} {key}"] = {"beats_with_disjoint_intervals": beaten,
                                         "not_beaten": [b for b in baselines if b not in beaten]}  # fmt: skip
            print(f"{name}, {key}: above every recalibrated baseline with disjoint 95% intervals: "
                  f"{'YES' if len(beaten) == len(baselines) else 'NO'} (not beaten: {verdicts[f'{name} {key}']['not_beaten']})")

    generalization = None
    if args.generalization and H:
        from pdiff_hf.novelty.generalization_network import GENERATED, HELDOUT, TRAINING, evaluate_generalization
        from pdiff_hf.novelty.generalization_report import summary_lines

        start = time.perf_counter()
        generalization = {}
        for name in (n for n in raw if n.startswith("p-diff")):
            others = {b: recalibrated[b] for b in baselines if recalibrated[b].shape[0] >= 2}
            known = {TRAINING: recal_train_preds, HELDOUT: predict(recal_held), GENERATED: predictions[name],
                     **{b: predictions[b] for b in others}}  # fmt: skip
            result = evaluate_generalization(model, layout, recal_train, recal_held, recalibrated[name], data,
                                             baselines=others, predictions=known, seed=args.seed,
                                             train_runs=train_runs, heldout_runs=run_ids[run_ids >= K]).to_dict()  # fmt: skip
            generalization[name] = {"verdict": result["verdict"], "summary": result["summary"]}
            print(f"\nheld-out generalization test, {name} (recalibrated training, held-out runs, generated, baselines):")
            for line in summary_lines(result):
                print("   " + line)
        print(f"# generalization test: {time.perf_counter() - start:.0f} s")

    total_min = (time.perf_counter() - total_start) / 60
    print(f"\n# total {total_min:.1f} min (runs + alignment {collect_s / 60:.1f} min, recalibration {recal_s:.0f} s, fit + "
          f"generate {', '.join(f'{n} {s:.0f} s' for n, s in fit_seconds.items())}); "
          f"{align_s / (K + H - 1):.2f} s per aligned run", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "D": layout.dim, "alignment": alignment,
                       "alignment_s": align_s, "collect_s": collect_s, "fit_s": fit_seconds,
                       "total_min": total_min, "thresholds": {"min_accuracy": min_acc, "good_accuracy": good_acc,
                       "novel_max_iou": novel_iou, "novel_loo_max_iou": novel_loo_iou},
                       "training": train_row, "groups": rows, "verdicts": verdicts,
                       "generalization": generalization}, f, indent=1, default=str)  # fmt: skip


if __name__ == "__main__":
    main()
