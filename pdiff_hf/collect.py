"""Collecting checkpoints with p-diff's recipe.

1. Train the target network (all parameters).
2. Keep training only the selected parameters and save the selection every ``save_every`` steps until
   ``num_checkpoints`` are saved. Normalization layers whose running statistics are *not* selected are put in eval
   mode for this phase, so every checkpoint is evaluated with exactly the statistics of the final base model.

Each checkpoint is then evaluated (batched) on the validation and test splits and the collection is returned as a
checkpoint dataset (:mod:`pdiff_hf.checkpoints`).
"""

from typing import Callable, Optional, Sequence

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import get_layout, make_checkpoint_dataset, set_layout
from .data import ClassificationSplits, shuffled_batches
from .evaluation import evaluate_parameters
from .layout import ParamLayout


def train_classifier(
    model: nn.Module,
    data: ClassificationSplits,
    epochs: int = 30,
    learning_rate: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train every parameter of ``model`` with AdamW and a cosine schedule (step 1 of the recipe)."""
    gen = torch.Generator().manual_seed(seed)
    n = data.train_x.shape[0]
    steps_per_epoch = max(n // batch_size, 1)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
    model.train()
    it = shuffled_batches(n, min(batch_size, n), gen, drop_last=True)
    for _ in tqdm(range(total), desc="train target", disable=not progress, leave=False):
        idx = next(it)
        loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
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
    data: ClassificationSplits,
    layout: ParamLayout,
    num_checkpoints: int = 200,
    save_every: int = 1,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    momentum: float = 0.9,
    seed: int = 0,
    run_id: int = 0,
    train_epochs: int = 0,
    train_learning_rate: float = 3e-3,
    evaluate: bool = True,
    progress: bool = False,
) -> datasets.Dataset:
    """Run p-diff's collection recipe on ``model`` (modified in place) and return the checkpoint dataset.

    Args:
        layout: the selection to collect (e.g. ``ParamLayout.from_module(model, last_norm_layers=2)``).
        num_checkpoints / save_every: save one checkpoint every ``save_every`` SGD steps on the selection.
        learning_rate / momentum: SGD on the selection. Too small a step size makes consecutive checkpoints near
            copies of each other; pick one at which they differ in accuracy and predictions.
        train_epochs: epochs of full training first (0 if ``model`` is already trained).
        evaluate: evaluate every checkpoint on the validation and test splits (batched). Callers that evaluate the
            checkpoints anyway (the demo's novelty analysis) pass ``False`` and add the columns themselves.

    Columns: ``params``, ``run_id``, ``seed``, ``step``, and with ``evaluate`` ``val_accuracy``, ``test_accuracy``
    (percent).
    """
    layout.check_module(model)
    if num_checkpoints < 1 or save_every < 1:
        raise ValueError(f"expected num_checkpoints >= 1 and save_every >= 1, found {num_checkpoints}, {save_every}")
    torch.manual_seed(seed)
    if train_epochs > 0:
        train_classifier(model, data, epochs=train_epochs, learning_rate=train_learning_rate, seed=seed, progress=progress)

    gen = torch.Generator().manual_seed(seed + 1)
    undo = _freeze_for_collection(model, layout)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=learning_rate, momentum=momentum) if trainable else None
    it = shuffled_batches(data.train_x.shape[0], min(batch_size, data.train_x.shape[0]), gen, drop_last=True)
    vectors, steps = [], []
    bar = tqdm(total=num_checkpoints, desc="collect checkpoints", disable=not progress, leave=False)
    step = 0
    while len(vectors) < num_checkpoints:
        idx = next(it)
        out = model(data.train_x[idx])
        if opt is not None:
            loss = nn.functional.cross_entropy(out, data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step += 1
        if step % save_every == 0:
            vectors.append(layout.flatten(model))
            steps.append(step)
            bar.update(1)
    bar.close()
    undo()

    params = torch.stack(vectors)
    n = len(vectors)
    columns = {"run_id": [run_id] * n, "seed": [seed] * n, "step": steps}
    if evaluate:
        columns["val_accuracy"] = evaluate_parameters(model, layout, params, data.val_x, data.val_y).tolist()
        columns["test_accuracy"] = evaluate_parameters(model, layout, params, data.test_x, data.test_y).tolist()
    return make_checkpoint_dataset(params, layout, columns)


def collect_from_runs(
    model: nn.Module,
    data: ClassificationSplits,
    layout: ParamLayout,
    seeds: Sequence[int],
    reset: Optional[Callable[[nn.Module, int], None]] = None,
    **kwargs,
) -> datasets.Dataset:
    """Collect from several runs that restart from ``model``'s current state, each with its own seed (data order
    and, through ``reset(model, seed)``, e.g. a re-initialized selection). Runs get ``run_id`` 0, 1, …; every run
    shares the tensors outside the selection, so all checkpoints load into the same base network."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    parts = []
    for run_id, seed in enumerate(seeds):
        model.load_state_dict(start)
        if reset is not None:
            reset(model, seed)
        parts.append(collect_checkpoints(model, data, layout, seed=seed, run_id=run_id, **kwargs))
    merged = datasets.concatenate_datasets(parts)
    return set_layout(merged, get_layout(parts[0]))
