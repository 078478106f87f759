"""transformers models end to end, with no wrapper: collect checkpoints → fit p-diff → ``output_type="model"`` →
evaluate. A tiny ViT (image classification, a ``datasets.DatasetDict``) and a tiny BERT (sequence classification with
padding masks, DataLoaders of dict batches), both built from configs; the layout keeps the models' own names."""

import datasets
import pytest
import torch

from pdiff_hf import (
    ParamLayout,
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    collect_checkpoints,
    evaluate_parameters,
    fit_pdiff,
    predict_with_parameters,
)

TINY = PDiffConfig(
    ae_block_out_channels=(16, 16), latent_channels=2, denoiser_block_out_channels=(16, 32), ae_steps=40,
    denoiser_steps=40, ae_train_batch_size=8, denoiser_train_batch_size=8, lr_warmup_steps=0,
)  # fmt: skip


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config)


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def _vit_data(n=160):
    """Images whose label is the brightest of the three colour channels."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(n, 3, 8, 8, generator=gen) * 0.5
    labels = torch.randint(0, 3, (n,), generator=gen)
    pixels[torch.arange(n), labels] += 1.0

    def split(a, b):
        return datasets.Dataset.from_dict({"pixel_values": pixels[a:b].numpy(), "label": labels[a:b].tolist()})

    return datasets.DatasetDict({"train": split(0, 96), "validation": split(96, 128), "test": split(128, n)})


def _bert_data(n=160):
    """Token sequences of varying length (padded, with attention masks); the label is the most frequent of the
    tokens 1, 2, 3."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 30, (n, 12), generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    lengths = torch.randint(6, 13, (n,), generator=gen)
    for i in range(n):
        ids[i, 1:4] = labels[i] + 1
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = ids * mask  # padding token 0
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]

    def loader(a, b, shuffle=False):
        return torch.utils.data.DataLoader(
            rows[a:b], batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(0)
        )

    return {"train": loader(0, 96, shuffle=True), "validation": loader(96, 128), "test": loader(128, n)}


def _end_to_end(model, data, layout, learning_rate, test_source):
    ckpts = collect_checkpoints(
        model, data, layout, num_checkpoints=12, train_epochs=4, learning_rate=learning_rate, batch_size=16,
        progress=False,
    )  # fmt: skip
    assert {"val_accuracy", "test_accuracy", "step"} <= set(ckpts.column_names)
    params = checkpoint_params(ckpts)
    assert params.shape == (12, layout.dim)
    pipe = fit_pdiff(params, layout, TINY, progress=False).set_target(model)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, PDiffPipeline) and pipe.target is model
    out = pipe(num_models=4, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="model")
    vectors = out.models.vectors
    batched = evaluate_parameters(model, layout, vectors, test_source)
    per_model = []
    for i, generated in enumerate(out.models):
        assert type(generated) is type(model) and not generated.training
        assert torch.equal(layout.flatten(generated), vectors[i])
        per_model.append(evaluate_parameters(generated, layout, layout.flatten(generated), test_source)[0])
    # every generated network scores exactly what the batched evaluation of its vector scored
    torch.testing.assert_close(torch.stack(per_model), batched)
    return ckpts, batched


def test_tiny_vit_end_to_end():
    vit = _vit()
    layout = ParamLayout.from_module(vit, include="classifier.*", last_norm_layers=1)
    assert layout.names == ["vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"]
    data = _vit_data()
    ckpts, generated = _end_to_end(vit, data, layout, 0.05, data["test"])
    assert min(ckpts["test_accuracy"]) > 50.0  # the collection learned the task (chance: 33 %)
    assert generated.shape == (4,) and bool((generated >= 0).all())
    # the generated models predict with the tensors outside the selection unchanged
    models_preds = predict_with_parameters(vit, layout, checkpoint_params(ckpts)[:2], data["test"])
    assert models_preds.shape == (2, 32)


def test_tiny_bert_end_to_end_with_attention_masks():
    bert = _bert()
    layout = ParamLayout.from_module(bert, include="classifier.*", last_norm_layers=1)
    assert layout.names[-2:] == ["classifier.weight", "classifier.bias"]
    assert layout.names[0].startswith("bert.encoder.layer.0.output.LayerNorm")
    data = _bert_data()
    ckpts, _ = _end_to_end(bert, data, layout, 0.05, data["test"])
    assert len(set(ckpts["val_accuracy"])) >= 1
    # padding matters: the masked call differs from an unmasked one, and evaluation uses the mask
    batch = next(iter(data["test"]))
    with torch.no_grad():
        masked = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        unmasked = bert(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(masked, unmasked)
    vector = layout.flatten(bert)
    expected = (masked.argmax(-1) == batch["labels"]).float().mean() * 100
    first_batch = [batch]
    torch.testing.assert_close(evaluate_parameters(bert, layout, vector, first_batch)[0], expected)


@pytest.mark.parametrize("make", [_vit, _bert])
def test_bad_inputs_for_transformers_models(make):
    from pdiff_hf.errors import MissingLabelsError

    model = make().eval()
    layout = ParamLayout.from_module(model, include="classifier.*")
    if make is _vit:
        batch = {"pixel_values": torch.randn(4, 3, 8, 8)}
    else:
        batch = {"input_ids": torch.randint(0, 30, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    with pytest.raises(MissingLabelsError, match="expected every batch to carry labels"):
        evaluate_parameters(model, layout, layout.flatten(model), [batch])
