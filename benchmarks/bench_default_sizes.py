#!/usr/bin/env python
"""Wall time of ``fit_pdiff`` with ``PDiffConfig``'s defaults at medium D, one torch thread.

Synthetic checkpoints (rank-8 variation around a base point plus small noise, as in ``bench_scale.py``), ``N``
of them, so only D matters. ``--set FIELD=VALUE`` overrides PDiffConfig fields (comma-separated tuples), e.g. the
conv autoencoder before the patch rule: ``--set ae_patch_size=1 --set ae_block_out_channels=16,32,32``.
``--step_fraction 0.1`` trains a tenth of the steps and also prints the time scaled back up (an estimate, for
settings too slow to run in full).

    OMP_NUM_THREADS=1 python benchmarks/bench_default_sizes.py --dims 2048 4810
    OMP_NUM_THREADS=1 python benchmarks/bench_default_sizes.py --dims 2048 4810 --step_fraction 0.1 \
        --set ae_patch_size=1 --set ae_block_out_channels=16,32,32

Prints one JSON line per D: the resolved conv sizes, latent shape, wall seconds, CPU seconds of this process (with
one thread about the wall time of an idle machine, and far less sensitive to other load on a shared one), and the
reconstruction MSE of the training checkpoints in normalized space (1.0: predicting the mean).
"""

import argparse
import dataclasses
import json
import time

import torch


def parse_value(field, text):
    default = field.default
    if text == "None":
        return None
    if isinstance(default, tuple) or "Tuple" in str(field.type):
        return tuple(int(v) for v in text.split(","))
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int) or "int" in str(field.type):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 4810])
    parser.add_argument("--num_checkpoints", type=int, default=200)
    parser.add_argument("--step_fraction", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from torch import nn

    from pdiff_hf import PDiffConfig, ParamLayout, fit_pdiff
    from pdiff_hf.training.config import conv_autoencoder_sizes

    fields = {f.name: f for f in dataclasses.fields(PDiffConfig)}
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = parse_value(fields[name], value)
    base = PDiffConfig(**overrides)
    config = dataclasses.replace(
        base,
        ae_steps=max(1, round(base.ae_steps * args.step_fraction)),
        denoiser_steps=max(1, round(base.denoiser_steps * args.step_fraction)),
    )
    for dim in args.dims:
        layout = ParamLayout.from_module(nn.Linear(dim - 1, 1))  # weight (1, D - 1) + bias (1,) = D
        g = torch.Generator().manual_seed(0)
        basis = torch.randn(8, dim, generator=g)
        params = torch.randn(dim, generator=g) + 0.1 * torch.randn(args.num_checkpoints, 8, generator=g) @ basis
        params += 0.001 * torch.randn(args.num_checkpoints, dim, generator=g)
        start, cpu_start = time.perf_counter(), time.process_time()
        pipe = fit_pdiff(params, layout, config, progress=False)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        ae = pipe.autoencoder.eval()
        with torch.no_grad():
            normalized = ae.normalize(params)
            mse = float((ae.decode(ae.encode(normalized)) - normalized).pow(2).mean())
        channels, patch = conv_autoencoder_sizes(config, dim)
        print(json.dumps({
            "D": dim, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
            "ae_block_out_channels": list(channels), "ae_patch_size": patch,
            "latent_shape": list(ae.latent_shape), "ae_steps": config.ae_steps, "denoiser_steps": config.denoiser_steps,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "cpu_seconds_full_steps_estimate": round(cpu_seconds / args.step_fraction, 1),
            "train_reconstruction_mse_normalized": round(mse, 4),
        }), flush=True)


if __name__ == "__main__":
    main()
