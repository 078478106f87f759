#!/usr/bin/env python
"""p-diff on LoRA adapters through PEFT: 200 adapter checkpoints -> 50 generated adapters -> reloaded with
``PeftModel.from_pretrained`` and evaluated, against the originals, offline::

    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --output-dir lora_out [--seed 0]

The experiment (everything built from configs, synthetic data, no downloads):

1. base model: a tiny BERT (hidden 32, 2 layers, 2 heads, vocabulary 100) trained in full on task A: sequences of
   15 tokens in 1..99, four token groups (1-25, 26-50, 51-75, 76-99) with counts c0..c3; label: the most frequent
   group (4 classes). Its encoder becomes the encoder of a 2-class ``BertForSequenceClassification`` (new head);
2. LoRA (r=4, alpha 8, on ``query``/``value``, ``task_type="SEQ_CLS"``, so the classifier is a ``modules_to_save``
   copy) adapts it to task B, label ``(c0 > c1) XOR (c2 > c3)`` (not linear in the counts the base learned: the
   head alone cannot solve it), with ``transformers.Trainer`` at a constant learning rate;
   ``PDiffCheckpointCallback`` records the adapter at every step, and the last ``--num-checkpoints`` steps are the
   training checkpoints (D = 1,090);
3. ``fit_pdiff`` (``PDiffConfig()`` defaults) with ``target=peft_target(peft_model)``; ``pipe(num_models=50,
   output_type="peft")`` -> ``save_pretrained`` -> one adapter folder each;
4. every folder reloaded with ``PeftModel.from_pretrained(base, folder)`` and evaluated; the originals are evaluated
   the same way (their adapters loaded with ``set_peft_model_state_dict``). Models are selected on the validation
   split and reported on the test split.
5. novelty: ``analyze_novelty`` (vmap over the PeftModel's own parameter names, ``peft_module_layout``): distance
   of each generated adapter to its nearest training checkpoint against the originals' leave-one-out spacing, and
   the baselines (checkpoint averages, noise, Gaussian).

Prints the figures and writes ``results.json`` (and the adapters, ``adapters/``) to ``--output-dir``.
"""

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from pdiff_hf import (
    PDiffCheckpointCallback,
    PDiffConfig,
    checkpoint_params,
    fit_pdiff,
    summarize_accuracies,
)
from pdiff_hf.evaluation.data import ClassificationSplits
from pdiff_hf.novelty import analyze_novelty
from pdiff_hf.peft_adapters import peft_layout, peft_module_layout, peft_target

SEQ_LEN = 15


def make_split(n: int, seed: int, task: str):
    """``(input_ids (n, 15), labels (n,))``; task ``"A"``: the most frequent of four token groups (4 classes),
    ``"B"``: ``(c0 > c1) XOR (c2 > c3)`` over the group counts (2 classes)."""
    ids = torch.randint(1, 100, (n, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    counts = torch.stack([((ids - 1) // 25 == k).sum(1) for k in range(4)], dim=1)  # (n, 4)
    if task == "A":
        return ids, counts.argmax(1)
    return ids, ((counts[:, 0] > counts[:, 1]) ^ (counts[:, 2] > counts[:, 3])).long()


@torch.no_grad()
def accuracy(model, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    hits = sum(
        int((model(input_ids=ids[i : i + batch_size]).logits.argmax(-1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(ids), batch_size)
    )
    return 100.0 * hits / len(ids)


def train_base(seed: int, steps: int):
    """A 4-class model trained in full on task A with a plain AdamW loop, and the base for task B: a 2-class
    ``BertForSequenceClassification`` with its encoder (and a new, random head). Returns both."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager",  # vmap (novelty analysis) has no batching rule for CPU SDPA: ~4x slower
    )  # fmt: skip
    model = BertForSequenceClassification(BertConfig(**config, num_labels=4))
    ids, labels = make_split(steps * 64, seed + 100, "A")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for i in range(steps):
        loss = model(input_ids=ids[i * 64 : (i + 1) * 64], labels=labels[i * 64 : (i + 1) * 64]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    base = BertForSequenceClassification(BertConfig(**config, num_labels=2))
    base.bert.load_state_dict(model.bert.state_dict())
    return model.eval(), base.eval()


def collect_adapters(base, seed: int, train_steps: int, num_checkpoints: int, lr: float, tmp: Path):
    """LoRA on ``base`` trained with ``Trainer`` on task B; the adapter of each of the last ``num_checkpoints``
    steps, recorded by ``PDiffCheckpointCallback``. Returns the PeftModel, its layout and the ``(N, D)`` checkpoints."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(copy.deepcopy(base), lora)
    total = train_steps + num_checkpoints
    ids, labels = make_split(4000, seed + 1, "B")
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    callback = PDiffCheckpointCallback(save_steps=1, run_id=seed)
    args = TrainingArguments(
        output_dir=str(tmp), use_cpu=True, report_to=[], max_steps=total, per_device_train_batch_size=32,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=seed, dataloader_num_workers=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    ds = callback.dataset()
    keep = [i for i, step in enumerate(ds["step"]) if step > train_steps]
    return model.eval(), peft_layout(model), checkpoint_params(ds.select(keep))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="lora_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=600, help="full training steps of the base on task A")
    parser.add_argument("--lora-steps", type=int, default=1500, help="LoRA steps on task B before recording")
    parser.add_argument("--num-checkpoints", type=int, default=200)
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--num-models", type=int, default=50)
    parser.add_argument("--num-inference-steps", type=int, default=25)
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    model_a, base = train_base(args.seed, args.base_steps)
    val_b, test_b = make_split(1000, args.seed + 2, "B"), make_split(2000, args.seed + 3, "B")
    test_a = make_split(2000, args.seed + 4, "A")
    timings["base_training_s"] = time.perf_counter() - start
    print(f"task A model: test {accuracy(model_a, *test_a):.2f}%; base (its encoder, new head) on task B: "
          f"{accuracy(base, *test_b):.2f}%")  # fmt: skip

    start = time.perf_counter()
    peft_model, layout, params = collect_adapters(
        base, args.seed, args.lora_steps, args.num_checkpoints, args.lora_lr, out_dir / "trainer"
    )
    timings["lora_training_and_collection_s"] = time.perf_counter() - start
    target = peft_target(peft_model)  # the base without adapter layers, carrying the LoRA config
    print(f"collected {params.shape[0]} adapter checkpoints, D = {layout.dim} ({len(layout.names)} tensors)")

    start = time.perf_counter()
    pipe = fit_pdiff(params, layout, PDiffConfig(seed=args.seed), progress=False, target=target)
    timings["fit_pdiff_s"] = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    out = pipe(num_models=args.num_models, num_inference_steps=args.num_inference_steps, output_type="peft",
               generator=generator)  # fmt: skip
    timings["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    folders = out.params.save_pretrained(out_dir / "adapters")
    timings["save_adapters_s"] = time.perf_counter() - start

    # generated: each folder reloaded through PEFT, as a user would
    from peft import PeftModel, set_peft_model_state_dict

    start = time.perf_counter()
    gen_val, gen_test = [], []
    for folder in folders:
        model = PeftModel.from_pretrained(copy.deepcopy(target), str(folder))
        gen_val.append(accuracy(model, *val_b))
        gen_test.append(accuracy(model, *test_b))
    timings["reload_and_evaluate_generated_s"] = time.perf_counter() - start
    # originals: the same network, adapters loaded one after the other
    evaluator = copy.deepcopy(peft_model)
    orig_val, orig_test = [], []
    for vector in params:
        set_peft_model_state_dict(evaluator, layout.unflatten(vector))
        orig_val.append(accuracy(evaluator, *val_b))
        orig_test.append(accuracy(evaluator, *test_b))
    gen_val, gen_test, orig_val, orig_test = map(torch.tensor, (gen_val, gen_test, orig_val, orig_test))

    start = time.perf_counter()
    train_b = make_split(4000, args.seed + 1, "B")  # the Trainer's split (not used by the analysis)
    splits = ClassificationSplits(*train_b, *val_b, *test_b)
    report = analyze_novelty(
        peft_model, peft_module_layout(peft_model, layout), params, out.params.vectors, splits, normalizer=pipe,
        seed=args.seed, train_val_accuracy=orig_val, batch_size=1000,
    )  # fmt: skip
    timings["novelty_s"] = time.perf_counter() - start
    # the vmap path of the novelty analysis must agree with the PEFT reloads
    assert torch.allclose(report.generated.test_accuracy.double(), gen_test.double(), atol=1e-6), "paths disagree"

    original, generated = summarize_accuracies(orig_test), summarize_accuracies(gen_test)
    margin_ok = generated["median"] >= original["median"] - 1.0
    best_orig, best_gen = int(orig_val.argmax()), int(gen_val.argmax())
    nn_orig, nn_gen = report.original.nn_distance, report.generated.nn_distance
    print(f"\ntask B test accuracy (%), {len(gen_test)} generated vs {len(orig_test)} original adapters")
    print("| models | best | mean | median | min | best by val -> test |")
    print("|---|---|---|---|---|---|")
    for name, s, pick in (("original", original, orig_test[best_orig]), ("p-diff", generated, gen_test[best_gen])):
        print(f"| {name} | {s['best']:.2f} | {s['mean']:.2f} | {s['median']:.2f} | {s['min']:.2f} | {float(pick):.2f} |")
    print(f"generated median {generated['median']:.2f} >= originals' median - 1 pp ({original['median'] - 1:.2f}): "
          f"{'YES' if margin_ok else 'NO'}")  # fmt: skip
    print(f"nearest-checkpoint distance (RMS per entry, normalized): generated median {float(nn_gen.median()):.4f}, "
          f"originals' leave-one-out median {float(nn_orig.median()):.4f} "
          f"(ratio {float(nn_gen.median() / nn_orig.median()):.2f}x)")  # fmt: skip
    print("\n" + report.table())
    print("verdict:\n- " + "\n- ".join(report.verdict))
    print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    results = {
        "seed": args.seed, "dim": layout.dim, "num_checkpoints": int(params.shape[0]), "num_models": len(folders),
        "original_test": original, "generated_test": generated, "median_within_1pp": margin_ok,
        "best_by_val_test": {"original": float(orig_test[best_orig]), "generated": float(gen_test[best_gen])},
        "nn_distance_median": {"generated": float(nn_gen.median()), "original": float(nn_orig.median())},
        "novelty": report.to_dict(), "timings_s": timings,
    }  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
