"""Held-out reconstruction of the demo's checkpoints: conv autoencoder vs the linear (PCA) autoencoder.

Builds the default demo's checkpoints (MNIST-1D, ``MNIST1DCNN`` trained 15 epochs, 200 checkpoints of its last two
BatchNorm layers, D = 128, collected with SGD at the demo's step size), holds out every 10th checkpoint of the run
(180 training, 20 held out), fits on the training ones:

* ``conv``: :class:`~pdiff_hf.ParameterAutoencoder` at ``PDiffConfig()`` defaults (500 steps), via
  ``pdiff_hf.training.fit.train_autoencoder``;
* ``linear``: :class:`~pdiff_hf.LinearParameterAutoencoder` with ``--components`` latent values (default 64, the conv
  latent's size (4, 16)), whitened;

and prints, per seed, the RMS reconstruction error of the held-out checkpoints in normalized units
(``||z_rec - z||_2 / sqrt(D)`` in the per-dimension standardized space of the training checkpoints, BatchNorm
running variances in log space; median over the held-out checkpoints), beside PCA with the same number of components
computed independently (``pdiff_hf.novelty.reconstruction.pca_reconstruct``), the trivial code that returns the
training mean, and the originals' nearest-neighbour spacing in the same units (each training checkpoint to its
nearest other training checkpoint, and each held-out checkpoint to its nearest training checkpoint). With
``--accuracy`` also the median test accuracy of held-out checkpoints and of both reconstructions.

    OMP_NUM_THREADS=1 python benchmarks/bench_reconstruction.py --seeds 0 1 2 --accuracy
    OMP_NUM_THREADS=1 python benchmarks/bench_reconstruction.py --split last   # the demo's gate split: 200 + last 20

Figures are printed, never asserted: this is a benchmark, not a test.
"""

import argparse
import math
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="demo seeds (target, collection, autoencoder)")
    p.add_argument("--num-checkpoints", type=int, default=200)
    p.add_argument("--split", choices=["every", "last"], default="every",
                   help="'every': hold out every --holdout-every-th checkpoint of the run (exchangeable with the "
                   "training ones); 'last': collect --num-checkpoints plus --num-last more and hold out those last "
                   "ones (the demo's reconstruction-gate split: extrapolation along the run)")
    p.add_argument("--holdout-every", type=int, default=10, help="hold out checkpoints i with i %% k == k - 1")
    p.add_argument("--num-last", type=int, default=20, help="held-out checkpoints for --split last")
    p.add_argument("--components", type=int, default=64, help="latent values of the linear code (4 x components/4)")
    p.add_argument("--ae-steps", type=int, default=None, help="conv autoencoder steps (default PDiffConfig's)")
    p.add_argument("--accuracy", action="store_true", help="also evaluate held-out and reconstructions as networks")
    p.add_argument("--num-threads", type=int, default=1)
    return p.parse_args()


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row RMS difference ``(M,)`` of ``(M, D)`` tensors."""
    return (a - b).double().norm(dim=1) / math.sqrt(a.shape[1])


def nearest(a: torch.Tensor, b: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """Per-row RMS distance of ``a`` to its nearest row of ``b``."""
    d = torch.cdist(a.double(), b.double())
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values / math.sqrt(a.shape[1])


def run(seed: int, args) -> dict:
    from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
    from pdiff_hf.checkpoints.dataset import checkpoint_params
    from pdiff_hf.demos.demo import COLLECT_LR, DemoConfig, select_layout
    from pdiff_hf.models.linear_autoencoder import LinearParameterAutoencoder
    from pdiff_hf.novelty.reconstruction import pca_reconstruct
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d
    from pdiff_hf.training.config import PDiffConfig
    from pdiff_hf.training.fit import train_autoencoder
    from pdiff_hf.training.training_utils import build_autoencoder

    demo = DemoConfig(seed=seed)
    data = load_mnist1d(seed=demo.data_seed)
    torch.manual_seed(seed)
    model = MNIST1DCNN()
    train_classifier(model, data, epochs=demo.target_epochs, seed=seed, progress=False)
    layout = select_layout(model, "norm")
    extra = args.num_last if args.split == "last" else 0
    collected = collect_checkpoints(model, data, layout, num_checkpoints=args.num_checkpoints + extra, seed=seed,
                                    learning_rate=COLLECT_LR["norm"], evaluate=False, progress=False)  # fmt: skip
    params = checkpoint_params(collected)  # (N, D) in collection order
    k = args.holdout_every
    if args.split == "every":
        held_mask = torch.tensor([i % k == k - 1 for i in range(len(params))])
    else:
        held_mask = torch.arange(len(params)) >= args.num_checkpoints
    train, held = params[~held_mask], params[held_mask]

    config = PDiffConfig(seed=seed, autoencoder_type="conv",
                         **({"ae_steps": args.ae_steps} if args.ae_steps else {}))  # fmt: skip
    torch.manual_seed(seed)
    conv = build_autoencoder(layout, config)
    t = time.perf_counter()
    train_autoencoder(conv, train, config, progress=False)
    conv_s = time.perf_counter() - t

    channels = 4 if args.components % 4 == 0 else 1
    linear = LinearParameterAutoencoder(in_dim=layout.dim, latent_channels=channels,
                                        latent_length=args.components // channels, param_layout=layout.to_list())  # fmt: skip
    t = time.perf_counter()
    linear.fit_normalization(train)
    linear.fit_basis(train)
    linear.set_latent_scaling(train)
    linear_s = time.perf_counter() - t

    with torch.no_grad():
        conv.eval()
        z_train, z_held = conv.normalize(train), conv.normalize(held)
        same_norm = torch.equal(conv.norm_mean, linear.norm_mean) and torch.equal(conv.norm_std, linear.norm_std)
        conv_rec = conv.latents_to_params(conv.params_to_latents(held))
        linear_rec = linear.latents_to_params(linear.params_to_latents(held))
        errors = {
            "conv": rms(conv.normalize(conv_rec), z_held),
            "linear": rms(conv.normalize(linear_rec), z_held),
            "pca": rms(pca_reconstruct(z_train, z_held, args.components), z_held),
            "mean": rms(z_train.mean(0, keepdim=True).expand_as(z_held), z_held),
        }
        spacing = {"train_nn": nearest(z_train, z_train, True), "heldout_nn": nearest(z_held, z_train, False)}
    out = {
        "seed": seed, "D": layout.dim, "train": len(train), "heldout": len(held), "same_normalization": same_norm,
        "conv_latent": list(conv.latent_shape), "linear_latent": list(linear.latent_shape), "linear_rank": linear.rank,
        "conv_fit_s": conv_s, "linear_fit_s": linear_s,
        "rms_median": {name: float(v.median()) for name, v in {**errors, **spacing}.items()},
        "rms_mean": {name: float(v.mean()) for name, v in {**errors, **spacing}.items()},
    }  # fmt: skip
    if args.accuracy:
        from pdiff_hf.evaluation.batched import evaluate_parameters

        everything = torch.cat([held, conv_rec, linear_rec])
        acc = evaluate_parameters(model, layout, everything, data.test_x, data.test_y, batch_size=10,
                                  models_per_chunk=50)  # fmt: skip
        h = len(held)
        out["test_accuracy_median"] = {name: float(acc[i * h : (i + 1) * h].median())
                                       for i, name in enumerate(("heldout", "conv", "linear"))}  # fmt: skip
    return out


def main(args):
    torch.set_num_threads(args.num_threads)
    rows = []
    for seed in args.seeds:
        r = run(seed, args)
        rows.append(r)
        how = f"every {args.holdout_every}th held out" if args.split == "every" else "the last ones held out"
        print(f"seed {seed}: D={r['D']}, {r['train']} training / {r['heldout']} held-out checkpoints ({how}), conv latent {r['conv_latent']}, linear latent {r['linear_latent']} "
              f"(rank {r['linear_rank']}), same normalization: {r['same_normalization']}; fit time conv "
              f"{r['conv_fit_s']:.1f} s, linear {r['linear_fit_s']:.3f} s", flush=True)  # fmt: skip
    print("\nHeld-out reconstruction, RMS in normalized units (median over held-out checkpoints; mean in brackets)")
    names = [("conv", "conv autoencoder (PDiffConfig defaults)"),
             ("linear", f"linear autoencoder ({args.components} components)"),
             ("pca", f"PCA, {args.components} components (torch.linalg.svd)"),
             ("mean", "training mean (trivial code)"),
             ("train_nn", "originals' NN spacing (training -> nearest other training)"),
             ("heldout_nn", "held-out -> nearest training checkpoint")]  # fmt: skip
    print("| " + " | ".join(["figure"] + [f"seed {r['seed']}" for r in rows]) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for key, label in names:
        cells = [f"{r['rms_median'][key]:.4f} ({r['rms_mean'][key]:.4f})" for r in rows]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for r in rows:
        m = r["rms_median"]
        print(f"seed {r['seed']}: conv / linear = {m['conv'] / m['linear']:.1f}x; linear / NN spacing = "
              f"{m['linear'] / m['train_nn']:.2f}; conv / NN spacing = {m['conv'] / m['train_nn']:.2f}")
        if "test_accuracy_median" in r:
            a = r["test_accuracy_median"]
            print(f"seed {r['seed']}: median test accuracy % held-out {a['heldout']:.2f}, conv reconstructions "
                  f"{a['conv']:.2f}, linear reconstructions {a['linear']:.2f}")


if __name__ == "__main__":
    main(parse_args())
