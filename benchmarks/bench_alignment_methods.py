#!/usr/bin/env python
"""How good is the span of K aligned runs? Alignment methods compared on the same cached independent runs.

    OMP_NUM_THREADS=1 python benchmarks/bench_alignment_methods.py --channels 128 --runs 32 --heldout_runs 4 \
        --cache_dir runs128 --workers 2 --pdiff

1. **Runs**: ``--runs + --heldout_runs`` independent runs of ``MNIST1DCNN(channels=C)`` exactly as
   :func:`~pdiff_hf.checkpoints.collect_runs.collect_from_runs` ``(align=True)`` trains them in
   ``bench_aligned_generation.py`` (model built under ``torch.manual_seed(--seed)``, re-initialized per run with
   seed ``--seed + r``, ``--epochs`` epochs, then ``--checkpoints_per_run`` SGD steps at lr 0.005 on the whole
   network), each cached unaligned in ``--cache_dir/run_{seed}.safetensors`` (``(checkpoints, D)``; trained by
   ``--workers`` processes when missing, reused otherwise).
2. **Alignment methods**, each finding one permutation per training run from the runs' final states:
   ``first`` (weight matching to run 0), ``merge_many`` (:func:`pdiff_hf.alignment.merge_many`: every run to the
   average of the others, round after round), ``activations`` (activation matching to run 0: each hidden layer's
   channels matched by the correlation of their post-ReLU activations on 500 training inputs, the method Git
   Re-Basin compares weight matching with; written here for MNIST1DCNN only) and ``activations_merge_many`` (the
   same, matched to the average activations of the other runs, 8 rounds).
3. **What the span holds**, every model's BatchNorm statistics recalibrated on 8 batches of 128 training inputs:
   the aligned average of the K runs; ``(1 - a) x_i + a x_j`` of two runs (``a`` = 0.25 and 0.5); averages of 4
   runs; samples of a Gaussian with the aligned checkpoints' covariance in their PCA subspace at temperature 1 and
   0.5 (``mean + t (sample - mean)``); with ``--pdiff``, p-diff with the linear code (``PDiffConfig.paper``'s
   DDPM, 64 components, fewer when N - 1 < 64) fitted on the aligned checkpoints.

Also the share of each held-out run's deviation from the training runs' mean (final checkpoints, raw units, the
held-out run matched to the aligned average) that lies in the training runs' span, and that of training run 0 in the
span of the other runs: the most any generator of the span can reproduce of a new run.

Per group: median test accuracy with min and max, median max-IoU of test errors with the training checkpoints, and
the good-and-novel share (good: >= the training checkpoints' 10th-percentile accuracy; novel: max-IoU below the
training runs' median pairwise IoU), as ``bench_aligned_generation.py`` defines them. Figures are printed, never
asserted.

Measured (runs 0-35, 1 torch thread, median recalibrated test accuracy in %; runs: 97.4% at 128 channels, 96.4% at
256): aligned average of 32 / midpoints of two / p-diff —

=====================================  =======  =========  ======
width, alignment                       average  midpoint   p-diff
=====================================  =======  =========  ======
128, first (1.6 s)                     89.2     93.8       87.0
128, merge_many (24 s)                 92.1     94.6       90.5
128, activations (7 s)                 89.3     94.2       89.5
128, activations_merge_many (47 s)     91.1     95.0       91.0
256, first (7 s)                       88.0     92.8       89.5
256, merge_many (93 s)                 89.6     93.4       90.9
=====================================  =======  =========  ======

No method and neither width makes the span of more than two aligned runs a low-loss region; good-and-novel is 0% for
every group except 2% of activation-matched ``a = 0.25`` interpolations. Share of a held-out run's deviation in the
training runs' span (128 channels): 0.07-0.08 (first), 0.04-0.08 (merge_many); training run 0 in the other runs'
span: 0.04 / 0.05.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_aligned_generation import iou_matrix  # noqa: E402

METHODS = ("first", "merge_many", "activations", "activations_merge_many")
COLLECT_LR = 0.005


def _train_run(job) -> str:
    """Train one run (a worker process) and cache its checkpoints; returns the file written."""
    channels, seed, base_seed, epochs, k, path = job
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from pdiff_hf.checkpoints.collect import collect_checkpoints
    from pdiff_hf.checkpoints.collect_runs import reinitialize
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.layout import ParamLayout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)
    torch.manual_seed(base_seed)
    model = MNIST1DCNN(channels=channels)
    layout = ParamLayout.from_module(model, include_buffers=True)
    reinitialize(model, seed)
    part = collect_checkpoints(model, data, layout, seed=seed, run_id=seed, num_checkpoints=k, train_epochs=epochs,
                               learning_rate=COLLECT_LR, evaluate=False, progress=False)  # fmt: skip
    save_file({"params": checkpoint_params(part).contiguous()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--heldout_runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--checkpoints_per_run", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", required=True, help="trained runs are cached here and reused")
    parser.add_argument("--workers", type=int, default=1, help="processes training the missing runs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pdiff", action="store_true", help="also fit p-diff (linear code) per method")
    parser.add_argument("--num_models", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    K, H, k = args.runs, args.heldout_runs, args.checkpoints_per_run
    os.makedirs(args.cache_dir, exist_ok=True)
    seeds = [args.seed + r for r in range(K + H)]
    paths = [os.path.join(args.cache_dir, f"run_{s}.safetensors") for s in seeds]
    jobs = [(args.channels, s, args.seed, args.epochs, k, p) for s, p in zip(seeds, paths) if not os.path.exists(p)]
    start = time.perf_counter()
    if jobs:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for path in pool.imap_unordered(_train_run, jobs):
                print(f"# trained {path}", flush=True)
        print(f"# {len(jobs)} runs trained in {(time.perf_counter() - start) / 60:.1f} min by {args.workers} "
              f"process(es)", flush=True)  # fmt: skip

    from safetensors.torch import load_file
    from scipy.optimize import linear_sum_assignment

    from pdiff_hf.alignment import apply_permutation, identity_permutations, merge_many, permutation_spec, weight_matching
    from pdiff_hf.evaluation.batched import accuracy_from_predictions, predict_with_parameters
    from pdiff_hf.evaluation.recalibration import recalibrate_parameters
    from pdiff_hf.layout import ParamLayout
    from pdiff_hf.novelty import StatsNormalizer, make_baselines
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=42)
    torch.manual_seed(args.seed)
    model = MNIST1DCNN(channels=args.channels)
    layout = ParamLayout.from_module(model, include_buffers=True)
    base = {n: t.clone() for n, t in model.state_dict().items()}
    spec = permutation_spec(model, (data.train_x[:2],))
    runs = [load_file(p)["params"] for p in paths]
    if any(r.shape != (k, layout.dim) for r in runs):
        raise SystemExit(f"expected cached runs of shape ({k}, {layout.dim}) in {args.cache_dir}: another --channels "
                         f"or --checkpoints_per_run?")  # fmt: skip
    finals = [{**base, **layout.unflatten(r[-1])} for r in runs[:K]]
    labels = data.test_y

    def predict(p):
        return predict_with_parameters(model, layout, p, data.test_x, batch_size=250, models_per_chunk=10)

    def recalibrate(p):
        return recalibrate_parameters(model, layout, p, data.train_x, num_batches=8)

    train = torch.cat(runs[:K])
    train_err = (predict(train) != labels).float()
    train_acc = 100.0 * (1 - train_err.mean(1)).double()
    run_of = torch.arange(K).repeat_interleave(k)
    other_run = run_of[:, None] != run_of[None, :]
    novel = float(iou_matrix(train_err, train_err)[other_run].double().median())
    good = float(train_acc.quantile(0.1))
    held = torch.stack([r[-1] for r in runs[K:]]) if H else None
    summary = {"D": layout.dim, "train_median": float(train_acc.median()), "train_min": float(train_acc.min()),
               "good": good, "novel_max_iou": novel, "groups": {}}  # fmt: skip
    print(f"# MNIST1DCNN(channels={args.channels}), D={layout.dim}; {K} training runs x {k} checkpoints: median "
          f"{summary['train_median']:.2f}%, min {summary['train_min']:.2f}%; good >= {good:.2f}%, novel: max-IoU < "
          f"{novel:.3f}", flush=True)  # fmt: skip

    def report(method: str, name: str, params: torch.Tensor, recalibrated: bool = True) -> None:
        preds = predict(recalibrate(params) if recalibrated else params)
        err = (preds != labels).float()
        acc = accuracy_from_predictions(preds, labels).double()
        max_iou = iou_matrix(err, train_err).max(1).values.double()
        gn = 100.0 * float(((acc >= good - 1e-9) & (max_iou < novel)).double().mean())
        row = {"n": len(acc), "median": float(acc.median()), "min": float(acc.min()), "max": float(acc.max()),
               "median_max_iou": float(max_iou.median()), "good_and_novel": gn}  # fmt: skip
        summary["groups"][f"{method}/{name}"] = row
        print(f"{method:24s} {name:30s} n={row['n']:3d}  acc {row['median']:.2f} [{row['min']:.2f}, {row['max']:.2f}]"
              f"  max-IoU {row['median_max_iou']:.3f}  good&novel {gn:.0f}%", flush=True)  # fmt: skip

    if H:
        report("-", "held-out runs (as trained)", held, recalibrated=False)

    xs = data.train_x[:500]
    hooks = {"features.0": "features.2", "features.3": "features.5", "features.6": "features.8"}  # conv -> ReLU

    def activations(state):
        model.load_state_dict(state)
        model.eval()
        out, modules = {}, dict(model.named_modules())
        handles = [modules[m].register_forward_hook(
            lambda mod, i, o, g=g: out.__setitem__(g, o.detach().transpose(0, 1).reshape(o.shape[1], -1)))
            for g, m in hooks.items()]  # fmt: skip
        with torch.no_grad():
            model(xs)
        for h in handles:
            h.remove()
        return {g: (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-6) for g, a in out.items()}

    def match(ref, acts):
        return {g: torch.as_tensor(linear_sum_assignment((ref[g] @ acts[g].T).numpy(), maximize=True)[1])
                for g in hooks}  # fmt: skip

    def activation_matching(rounds: int):
        acts = [activations(s) for s in finals]
        perms = [identity_permutations(spec)] + [match(acts[0], a) for a in acts[1:]]
        gen = torch.Generator().manual_seed(0)
        for _ in range(rounds):
            moved = [{g: a[g][p[g]] for g in hooks} for a, p in zip(acts, perms)]
            for i in torch.randperm(K, generator=gen).tolist():
                mean = {g: sum(moved[j][g] for j in range(K) if j != i) / (K - 1) for g in hooks}
                perms[i] = match(mean, acts[i])
                moved[i] = {g: acts[i][g][perms[i][g]] for g in hooks}
        inverse = {g: torch.argsort(q) for g, q in perms[0].items()}
        return [{g: p[g][inverse[g]] for g in p} for p in perms]

    def span_share(method: str, final: torch.Tensor, held_runs) -> None:
        """How much of a held-out run's deviation from the training runs' mean lies in their span (raw units): the
        most any generator of that span (averages, PCA Gaussians, the linear code) can reproduce of a new run."""
        mean = final.double().mean(0)
        ref = {**base, **layout.unflatten(mean.float())}
        _, _, basis = torch.linalg.svd(final.double() - mean, full_matrices=False)
        shares = []
        for r in held_runs:  # each held-out run aligned to the training runs' aligned average
            state = {**base, **layout.unflatten(r[-1])}
            moved = layout.flatten(apply_permutation(spec, state, weight_matching(spec, ref, state))).double() - mean
            shares.append(float((moved @ basis.T).norm() ** 2 / moved.norm() ** 2))
        others = final[1:].double()
        _, _, basis0 = torch.linalg.svd(others - others.mean(0), full_matrices=False)
        d0 = final[0].double() - others.mean(0)
        loo = float((d0 @ basis0.T).norm() ** 2 / d0.norm() ** 2)
        summary["groups"][f"{method}/span_share"] = {"heldout": shares, "training_run_0_in_the_others": loo}
        print(f"{method:24s} share of a held-out run's deviation in the training runs' span: "
              f"{', '.join(f'{x:.2f}' for x in shares)} (training run 0 in the other runs' span: {loo:.2f})", flush=True)

    for method in args.methods:
        start = time.perf_counter()
        if method == "first":
            perms = merge_many(spec, finals, max_rounds=0)
        elif method == "merge_many":
            perms = merge_many(spec, finals)
        else:
            if not all(g in spec.group_sizes for g in hooks):
                raise SystemExit("activation matching is written for MNIST1DCNN's three layers only")
            perms = activation_matching(8 if method == "activations_merge_many" else 0)
        seconds = time.perf_counter() - start
        aligned = [torch.stack([layout.flatten(apply_permutation(spec, {**base, **layout.unflatten(v)}, p))
                                for v in r]) for r, p in zip(runs[:K], perms)]  # fmt: skip
        summary["groups"][f"{method}/seconds"] = seconds
        print(f"# {method}: {seconds:.1f} s", flush=True)
        final = torch.stack([a[-1] for a in aligned])
        report(method, "aligned average of K", final.double().mean(0, keepdim=True).float())
        gen = torch.Generator().manual_seed(args.seed)
        pairs = torch.stack([torch.randperm(K, generator=gen)[:2] for _ in range(args.num_models)])
        for a in (0.25, 0.5):
            report(method, f"(1-a) x_i + a x_j, a={a}", (1 - a) * final[pairs[:, 0]] + a * final[pairs[:, 1]])
        fours = torch.stack([torch.randperm(K, generator=gen)[:4] for _ in range(args.num_models)])
        report(method, "averages of 4 runs", final[fours].mean(1))
        checkpoints = torch.cat(aligned)
        if H:
            span_share(method, final, runs[K:])
        norm = StatsNormalizer.from_checkpoints(checkpoints, layout)
        z = norm.normalize(checkpoints)
        sample = make_baselines(z, args.num_models, noise_levels=(), average_k=None, gaussian=False, generator=gen,
                                pca_gaussian=True)["pca_gaussian"][0]  # fmt: skip
        mean = z.mean(0)
        for t in (1.0, 0.5):
            report(method, f"PCA Gaussian, temperature {t}", norm.denormalize(mean + t * (sample - mean)))
        if args.pdiff:
            from pdiff_hf import PDiffConfig, fit_pdiff

            length = min(PDiffConfig.ae_linear_latent_length, (len(checkpoints) - 1) // PDiffConfig.latent_channels)
            if length < 2:
                print(f"# p-diff skipped: {len(checkpoints)} checkpoints are too few for the linear code", flush=True)
                continue
            config = PDiffConfig.paper(autoencoder_type="linear", seed=args.seed, ae_linear_latent_length=length - length % 2)
            pipe = fit_pdiff(checkpoints, layout, config, progress=False)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(num_models=args.num_models, num_inference_steps=25,
                       generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
            report(method, "p-diff (linear code, DDPM)", out.params.float())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), **summary}, f, indent=1)


if __name__ == "__main__":
    main()
