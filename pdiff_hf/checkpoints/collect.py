"""Collecting checkpoints with p-diff's recipe.

1. Train the target network (all parameters).
2. Keep training only the selected parameters and save the selection every ``save_every`` steps until
   ``num_checkpoints`` are saved. Normalization layers whose running statistics are *not* selected are put in eval
   mode for this phase, so every checkpoint is evaluated with exactly the statistics of the final base model.

Each checkpoint is then evaluated (batched) on the validation and test splits and the collection is returned as a
checkpoint dataset (:mod:`pdiff_hf.checkpoints.dataset`).

:func:`collect_branches` is the recipe for diverse checkpoints of one whole network: train to an early checkpoint,
then train branches from it with different data orders and collect checkpoints from each. Branches of one early
checkpoint stay in one basin (their averages are good networks); independently trained networks do not, and
averaging them in weight space is meaningless (:func:`collect_from_runs` warns, see
:mod:`pdiff_hf.checkpoints.run_mixing`).
"""

from typing import Any, Callable, Optional

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DimensionMismatchError
from ..evaluation.batched import evaluate_parameters
from ..evaluation.data import Batch, num_examples, split_sources, training_batches
from ..evaluation.scoring import ScoreFn, classification_loss, get_logits
from ..layout import ParamLayout
from .collect_checks import check_collection_args, check_finite_step
from .writer import CheckpointWriter

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss(model: nn.Module, batch: Batch, loss_fn: Optional[LossFn]) -> torch.Tensor:
    """``loss_fn(logits, labels)`` (default: cross-entropy) of one training batch; ``model(**batch)`` for dict
    batches, ``model(x)`` for tensors."""
    logits = get_logits(model(*batch.args, **batch.kwargs))
    return (loss_fn or classification_loss)(logits, batch.require_labels())


def train_classifier(
    model: nn.Module,
    data: Any,
    epochs: int = 15,
    learning_rate: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    loss_fn: Optional[LossFn] = None,
) -> nn.Module:
    """Train every parameter of ``model`` with AdamW and a cosine schedule (step 1 of the recipe), with a tqdm
    progress bar unless ``progress=False``. ``data``: :class:`ClassificationSplits` or a mapping of splits (see
    :func:`collect_checkpoints`)."""
    train = split_sources(data)["train"]
    gen = torch.Generator().manual_seed(seed)
    it = training_batches(train, batch_size, gen, model)
    n = num_examples(train)
    steps_per_epoch = max(n // batch_size, 1) if n is not None else len(train)
    total = epochs * steps_per_epoch
    # foreach: one call per step for all tensors, the same weights bit for bit as the default per-tensor loop
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
    model.train()
    for _ in tqdm(range(total), desc="train target", disable=not progress, leave=False):
        loss = _loss(model, next(it), loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def _freeze_for_collection(model: nn.Module, layout: ParamLayout):
    """requires_grad only on selected parameters; unselected norm statistics frozen. Returns an undo function."""
    selected = set(layout.names)
    saved_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
    model.train()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase):
            stats = {f"{mod_name}.running_mean", f"{mod_name}.running_var"}
            if not stats & selected:
                mod.eval()

    def undo():
        for name, p in model.named_parameters():
            p.requires_grad_(saved_grad[name])
        model.eval()

    return undo


def collect_checkpoints(
    model: nn.Module,
    data: Any,
    layout: ParamLayout,
    num_checkpoints: int = 200,
    save_every: int = 1,
    learning_rate: float = 0.2,
    batch_size: int = 128,
    momentum: float = 0.9,
    seed: int = 0,
    run_id: int = 0,
    train_epochs: int = 0,
    train_learning_rate: float = 3e-3,
    evaluate: bool = True,
    progress: bool = True,
    loss_fn: Optional[LossFn] = None,
    score_fn: Optional[ScoreFn] = None,
    max_in_memory_bytes: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """Run p-diff's collection recipe on ``model`` (modified in place) and return the checkpoint dataset.

    Args:
        layout: the selection to collect (e.g. ``ParamLayout.from_module(model, last_norm_layers=2)``).
        num_checkpoints / save_every: save one checkpoint every ``save_every`` SGD steps on the selection.
        learning_rate / momentum: SGD on the selection. Too small a step size makes the checkpoints near copies of
            each other; the default 0.2 (the demo's for BatchNorm layers) makes them differ in predictions. Measured
            on MNIST-1D, MNIST1DCNN, the last two BatchNorm layers (D=128), 200 checkpoints, 1 torch thread
            (``OMP_NUM_THREADS=1 python benchmarks/bench_collect_spread.py --learning_rate 0.001 0.01 0.1 0.2 0.5 1``,
            target trained with ``train_classifier``'s defaults, 15 epochs as in the demo; test accuracy in %;
            "NN agreement": median share of test predictions shared with the nearest other checkpoint in
            standardized weight space):

            ========  =========  =========  ============  ============  ========================
            lr        acc mean   acc std    best - min    NN agreement  distinct prediction sets
            ========  =========  =========  ============  ============  ========================
            0.001     96.46      0.062      0.20          1.0000        13 / 200 (near copies)
            0.01      96.47      0.127      0.50          1.0000        76 / 200
            0.1       96.29      0.177      1.10          0.9980        173 / 200
            0.2       96.13      0.272      1.30          0.9960        196 / 200
            0.5       94.53      2.068      10.10         0.9860        197 / 200 (drifting off)
            1.0       17.21      22.947     91.70         0.9950        71 / 200 (diverged)
            ========  =========  =========  ============  ============  ========================

            With a 30-epoch target (``--target_epochs 30``) lr 0.2 gave std 0.173 pp and 82 / 200 distinct: the
            spread depends on the target as much as on the step. The step size depends on the selection and network (the demo uses
            0.05 for the final linear layer, 0.005 for the whole network): measure the spread of yours the same way.
        train_epochs: epochs of full training first (0 if ``model`` is already trained).
        evaluate: evaluate every checkpoint on the validation and test splits (batched). Callers that evaluate the
            checkpoints anyway (the demo's novelty analysis) pass ``False`` and add the columns themselves.
        progress: tqdm progress bars (target training, collection), as diffusers pipelines show; ``False`` silences.

    Data: a :class:`ClassificationSplits` (tensors), or a mapping of splits — ``"train"`` and optionally
    ``"validation"`` (or ``"val"``) and ``"test"``, e.g. a ``datasets.DatasetDict`` — each a source of
    :mod:`pdiff_hf.evaluation.data` (a ``datasets.Dataset``, a DataLoader of dict batches, a mapping of columns, an
    ``(inputs, labels)`` pair). Dict batches are called as ``model(**batch)`` without their labels, so transformers
    models need no wrapper and the layout keeps the model's own tensor names.

    loss_fn: ``loss_fn(logits, labels)`` for the SGD steps (default: cross-entropy, labels ``-100`` ignored).
    score_fn: per-example ``score_fn(logits, labels) -> (B,)`` for the evaluation columns (default: accuracy).

    max_in_memory_bytes / cache_dir: the rows (``num_checkpoints * D * 4`` bytes, known before training) stay in memory
    up to ``max_in_memory_bytes`` (default 2 GiB, or half the free memory if less) and are streamed to an Arrow file in
    ``cache_dir`` beyond it; the dataset then memory-maps that file (:mod:`pdiff_hf.checkpoints.writer`). Not enough
    memory or disk is a :class:`~pdiff_hf.errors.CheckpointDatasetError` before training.

    Columns: ``params``, ``run_id``, ``seed``, ``step``, and with ``evaluate`` ``val_accuracy``, ``test_accuracy``
    (percent; ``val_score`` / ``test_score`` with a ``score_fn``) for the splits that ``data`` has.
    """
    layout.check_module(model)
    if num_checkpoints < 1 or save_every < 1:
        raise DimensionMismatchError(
            f"expected num_checkpoints >= 1 and save_every >= 1, found {num_checkpoints}, {save_every}"
        )
    # learning rates, momentum, batch size, non-empty splits, integer labels, one forward pass: before any training
    check_collection_args(
        model, data, learning_rate, momentum, batch_size, train_learning_rate if train_epochs > 0 else None,
        check_classes=loss_fn is None,
    )
    sources = split_sources(data)
    writer = CheckpointWriter(layout, num_checkpoints, max_in_memory_bytes, cache_dir)  # before any work
    torch.manual_seed(seed)
    if train_epochs > 0:
        train_classifier(
            model, data, epochs=train_epochs, learning_rate=train_learning_rate, seed=seed, progress=progress,
            loss_fn=loss_fn,
        )  # fmt: skip

    gen = torch.Generator().manual_seed(seed + 1)
    undo = _freeze_for_collection(model, layout)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=learning_rate, momentum=momentum, foreach=True) if trainable else None
    it = training_batches(sources["train"], batch_size, gen, model)
    steps = []
    bar = tqdm(total=num_checkpoints, desc="collect checkpoints", disable=not progress, leave=False)
    step = 0
    while writer.count < num_checkpoints:
        batch = next(it)
        if opt is not None:
            loss = _loss(model, batch, loss_fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            check_finite_step(loss, trainable, step + 1)  # divergence stops the collection at its first step
        else:  # nothing trainable is selected (only running statistics): the forward pass updates them
            model(*batch.args, **batch.kwargs)
        step += 1
        if step % save_every == 0:
            writer.append(layout.flatten(model))
            steps.append(step)
            bar.update(1)
    bar.close()
    undo()

    n = writer.count
    columns = {"run_id": [run_id] * n, "seed": [seed] * n, "step": steps}
    if evaluate:
        metric = "accuracy" if score_fn is None else "score"
        for split in ("val", "test"):
            if sources[split] is not None:
                rows = writer.row_chunks(n if not writer.streamed else 25)
                scores = [evaluate_parameters(model, layout, chunk, sources[split], score_fn=score_fn) for chunk in rows]
                columns[f"{split}_{metric}"] = torch.cat(scores).tolist()
    return writer.finish(columns)


def train_selection(
    model: nn.Module,
    data: Any,
    layout: ParamLayout,
    epochs: int,
    learning_rate: float = 3e-3,
    seed: int = 0,
    loss_fn: Optional[LossFn] = None,
    batch_size: int = 128,
) -> nn.Module:
    """Train only ``layout``'s parameters for ``epochs`` (AdamW, cosine schedule, data order from ``seed``), with
    unselected BatchNorm statistics frozen, as in the collection phase. Returns ``model`` in eval mode."""
    train = split_sources(data)["train"]
    gen = torch.Generator().manual_seed(seed)
    it = training_batches(train, batch_size, gen, model)
    n = num_examples(train)
    total = epochs * (max(n // batch_size, 1) if n is not None else len(train))
    undo = _freeze_for_collection(model, layout)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable:
        opt = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
        for _ in range(total):
            loss = _loss(model, next(it), loss_fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    undo()
    return model
