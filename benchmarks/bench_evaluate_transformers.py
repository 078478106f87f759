#!/usr/bin/env python
"""Evaluating many generated heads of a transformers model: the batched ``functional_call`` + ``vmap`` path of
``evaluate_parameters`` against the sequential per-model loop (``use_vmap=False``), timed in the same run::

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate_transformers.py --num-models 100 --num-examples 500 --repeats 3

The target is a tiny ``ViTForImageClassification`` built from a config (8x8 images, hidden size 16, one layer,
3 classes); the parameter vectors replace its classifier head (D = 51). The vectors are the head plus Gaussian noise:
evaluation time does not depend on where the vectors come from (a pipeline's ``out.models.vectors`` cost the same).
Both paths must give the same accuracies (checked). Figures are medians of ``--repeats`` runs, printed, never
asserted.
"""

import argparse
import statistics
import time

import torch

from pdiff_hf import ParamLayout, evaluate_parameters


def timed(fn, repeats):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-models", type=int, default=100)
    parser.add_argument("--num-examples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500, help="examples per forward pass")
    parser.add_argument("--models-per-chunk", type=int, default=25, help="models per vmap call")
    args = parser.parse_args()

    model = tiny_vit()
    layout = ParamLayout.from_module(model, include="classifier.*")
    gen = torch.Generator().manual_seed(0)
    head = layout.flatten(model)
    params = head + 0.5 * torch.randn(args.num_models, layout.dim, generator=gen)
    images = torch.randn(args.num_examples, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 3, (args.num_examples,), generator=gen)

    def run(use_vmap):
        return evaluate_parameters(
            model, layout, params, images, labels, batch_size=args.batch_size,
            models_per_chunk=args.models_per_chunk, use_vmap=use_vmap,
        )  # fmt: skip

    run(True), run(False)  # warm-up (first calls build the vmap'd function, allocate)
    vmap_s, vmap_acc = timed(lambda: run(True), args.repeats)
    loop_s, loop_acc = timed(lambda: run(False), args.repeats)
    assert torch.allclose(vmap_acc, loop_acc), "the two paths disagree"
    print(
        f"{args.num_models} tiny-ViT heads (D={layout.dim}) on {args.num_examples} examples, medians of "
        f"{args.repeats} runs, torch threads {torch.get_num_threads()}, models per vmap call {args.models_per_chunk}"
    )
    print("| path | seconds | per model |")
    print("|---|---|---|")
    print(f"| vmap (functional_call, batched) | {vmap_s:.3f} s | {1000 * vmap_s / args.num_models:.1f} ms |")
    print(f"| sequential per-model loop | {loop_s:.3f} s | {1000 * loop_s / args.num_models:.1f} ms |")
    print(f"vmap speed-up: {loop_s / vmap_s:.1f}x; mean accuracy {vmap_acc.mean():.2f}% (both paths equal)")


if __name__ == "__main__":
    main()
