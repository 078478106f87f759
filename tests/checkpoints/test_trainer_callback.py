"""``PDiffCheckpointCallback``: a ``transformers.Trainer`` run of a tiny BERT records a checkpoint dataset."""

import datasets
import numpy as np
import pytest
import torch

from pdiff_hf import (
    LayoutMismatchError,
    ParamLayout,
    SelectionError,
    checkpoint_params,
    get_layout,
)
from pdiff_hf.checkpoints.trainer_callback import PDiffCheckpointCallback
from pdiff_hf.errors import CheckpointDatasetError, PDiffError

transformers = pytest.importorskip("transformers")


def _data(n: int, seed: int) -> datasets.Dataset:
    """Sequences of 6 tokens with attention masks; the label is the first token mod 3."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, 6), generator=gen)
    mask = torch.ones(n, 6, dtype=torch.int64)
    mask[: n // 2, 4:] = 0
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": (ids[:, 0] % 3).tolist()})


def _accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def _trainer(model, tmp_path, callback, **overrides):
    args = dict(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=6, per_device_train_batch_size=8,
        per_device_eval_batch_size=16, learning_rate=1e-2, eval_strategy="steps", eval_steps=2, save_strategy="no",
        logging_strategy="no", seed=3, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    args.update(overrides)
    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**args),
        train_dataset=_data(48, 0),
        eval_dataset=_data(16, 1),
        compute_metrics=_accuracy,
        callbacks=[callback],
    )


def test_trainer_run_produces_a_checkpoint_dataset(tiny_bert, tmp_path):
    layout = ParamLayout.from_module(tiny_bert, include="classifier.*")
    callback = PDiffCheckpointCallback(layout, save_steps=2, run_id=7, metric="accuracy", record_first=True)
    before = layout.flatten(tiny_bert)
    trainer = _trainer(tiny_bert, tmp_path, callback)
    trainer.train()

    ds = callback.dataset()
    assert get_layout(ds) == layout and len(ds) == 4 == len(callback)
    assert ds.column_names == ["params", "step", "epoch", "run_id", "seed", "eval_accuracy"]
    assert ds["step"] == [0, 2, 4, 6] and ds["run_id"] == [7] * 4 and ds["seed"] == [3] * 4
    assert ds["epoch"][0] == 0.0 and ds["epoch"] == sorted(ds["epoch"]) and ds["epoch"][-1] == pytest.approx(1.0)
    params = checkpoint_params(ds)
    assert params.shape == (4, layout.dim)
    assert torch.equal(params[0], before) and torch.equal(params[-1], layout.flatten(trainer.model))
    assert all(not torch.equal(params[i], params[i + 1]) for i in range(3)), "training changed the head"
    # every recorded step was also an eval step: its row holds the accuracy of exactly those parameters
    evals = {h["step"]: h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h}
    assert sorted(evals) == [2, 4, 6]
    assert ds["eval_accuracy"] == [None] + [pytest.approx(evals[s]) for s in (2, 4, 6)]


def test_layout_from_selection_options_and_args_save_steps(tiny_bert, tmp_path):
    callback = PDiffCheckpointCallback(include="classifier.*", run_id="bert-a")
    _trainer(tiny_bert, tmp_path, callback, save_steps=3, eval_strategy="no").train()
    ds = callback.dataset()
    assert get_layout(ds).names == ["classifier.weight", "classifier.bias"]
    assert ds["step"] == [3, 6] and ds["run_id"] == ["bert-a", "bert-a"]
    assert "eval_loss" not in ds.column_names  # never evaluated


def test_bad_input(tiny_bert, tiny_vit, tmp_path):
    vit_layout = ParamLayout.from_module(tiny_vit, include="classifier.*")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    vit_norm = PDiffCheckpointCallback(include="vit.layernorm.*")  # a ViT selection on a BERT model
    with pytest.raises(SelectionError, match="matched no floating-point tensor of BertForSequenceClassification"):
        vit_norm.on_train_begin(args, state, control, model=tiny_bert)
    wrong = PDiffCheckpointCallback(ParamLayout.from_module(tiny_vit, include="vit.layernorm.*"))
    with pytest.raises(LayoutMismatchError, match=r"BertForSequenceClassification .*missing \['vit\.layernorm\.weight'"):
        wrong.on_train_begin(args, state, control, model=tiny_bert)
    with pytest.raises(PDiffError, match="expected save_steps to be a positive number"):
        PDiffCheckpointCallback(vit_layout, save_steps=0)
    with pytest.raises(PDiffError, match="expected either a layout or selection options"):
        PDiffCheckpointCallback(vit_layout, include="x")
    with pytest.raises(CheckpointDatasetError, match="expected at least one recorded checkpoint, found none"):
        PDiffCheckpointCallback(vit_layout).dataset()


def test_fit_pdiff_with_the_trained_model_as_target(tiny_bert, tiny_vit, tmp_path):
    from pdiff_hf import PDiffConfig, fit_pdiff

    callback = PDiffCheckpointCallback(include="classifier.*")
    _trainer(tiny_bert, tmp_path, callback, save_steps=2, eval_strategy="no").train()
    ds, config = callback.dataset(), PDiffConfig(ae_steps=2, denoiser_steps=2)
    layout = get_layout(ds)
    with pytest.raises(LayoutMismatchError, match=r"target ViTModel.*missing \['classifier\.weight'"):  # before training
        fit_pdiff(checkpoint_params(ds), layout, config, progress=False, target=tiny_vit.vit)  # no classifier
    pipe = fit_pdiff(checkpoint_params(ds), layout, config, progress=False, target=tiny_bert)
    assert pipe.target is tiny_bert
    out = pipe(num_models=2, num_inference_steps=3, output_type="model", generator=torch.Generator().manual_seed(0))
    assert isinstance(out.models[1], type(tiny_bert)) and not out.models[1].training
    assert torch.equal(layout.flatten(out.models[1]), out.models.vectors[1])
