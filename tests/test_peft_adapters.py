"""LoRA adapters with PEFT: layout, Trainer collection, ``output_type="peft"`` folders that ``PeftModel`` reloads."""

import copy
import json

import datasets
import pytest
import torch
from pdiff_hf.pipelines import PDiffPipeline
from pdiff_hf.pipelines.pipeline_checks import check_peft_output

from pdiff_hf import PDiffConfig, checkpoint_params, fit_pdiff, get_layout
from pdiff_hf.checkpoints.trainer_callback import PDiffCheckpointCallback
from pdiff_hf.errors import LayoutMismatchError, PeftLayoutError
from pdiff_hf.peft_adapters import (
    PEFT_CONFIG_KEY,
    GeneratedAdapters,
    load_adapter,
    peft_layout,
    peft_module_layout,
    peft_parameter_names,
    peft_state_dict,
    peft_target,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=16, num_labels=2)  # fmt: skip


def _base(seed=0, **overrides):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**{**TINY, **overrides})).eval()


def _lora(base):
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS")
    return peft.get_peft_model(base, config)


def _data(n, seed):
    """Label 1 when the sequence holds more tokens below 50 than from 50 on (a counting task)."""
    ids = torch.randint(1, 100, (n, 12), generator=torch.Generator().manual_seed(seed))
    return ids, ((ids < 50).sum(1) > 6).long()


@pytest.fixture(scope="module")
def trained():
    """A LoRA model trained a few steps (plain loop) and 8 of its adapter checkpoints, one per step."""
    model = _lora(_base())
    ids, labels = _data(64, 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    layout, rows = peft_layout(model), []
    model.train()
    for step in range(8):
        loss = model(input_ids=ids[step * 8 : step * 8 + 8], labels=labels[step * 8 : step * 8 + 8]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        rows.append(layout.flatten(peft_state_dict(model)))
    return model.eval(), layout, torch.stack(rows)


@pytest.fixture(scope="module")
def pipe(trained):
    model, layout, params = trained
    config = PDiffConfig(ae_steps=4, denoiser_steps=4, ae_train_batch_size=8, denoiser_train_batch_size=8, lr_warmup_steps=1)
    return fit_pdiff(params, layout, config, progress=False, target=peft_target(model))


def test_layout_is_the_peft_state_dict_and_maps_onto_the_peft_model(trained):
    model, layout, _ = trained
    state = peft.get_peft_model_state_dict(model)
    assert layout.names == list(state) and layout.dim == 2 * 2 * (4 * 32 + 32 * 4) + 2 * 32 + 2
    vector = layout.flatten(state)
    assert all(torch.equal(v, state[k]) for k, v in layout.unflatten(vector).items())  # exact round trip
    names = peft_parameter_names(model, layout)
    q = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert names[f"{q}.lora_A.weight"] == f"{q}.lora_A.default.weight"
    assert names["base_model.model.classifier.weight"] == "base_model.model.classifier.modules_to_save.default.weight"
    module_layout = peft_module_layout(model, layout)
    assert [s.shape for s in module_layout.specs] == [s.shape for s in layout.specs]
    assert torch.equal(module_layout.flatten(model), vector)  # the same vector read from the module's parameters


def test_peft_target_is_the_clean_base_with_the_adapter_config(trained):
    model, layout, _ = trained
    base = peft_target(model)
    assert type(base) is transformers.BertForSequenceClassification
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in base.named_parameters())
    assert torch.equal(base.classifier.weight, _base().classifier.weight)  # the original head, not the trained copy
    assert getattr(base.config, PEFT_CONFIG_KEY)["target_modules"] == ["query", "value"]
    assert peft_layout(model) == layout  # model itself untouched


def test_trainer_callback_records_the_adapter_of_a_peft_model(tmp_path):
    model = _lora(_base(1))
    ids, labels = _data(32, 1)
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    callback = PDiffCheckpointCallback(save_steps=1)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=3, per_device_train_batch_size=8,
        learning_rate=1e-2, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()
    ds = callback.dataset()
    assert get_layout(ds) == peft_layout(model) and ds["step"] == [1, 2, 3]
    params = checkpoint_params(ds)
    assert torch.equal(params[-1], peft_layout(model).flatten(peft_state_dict(model)))
    assert not torch.equal(params[0], params[1])


def test_output_type_peft_folders_reload_with_identical_logits(pipe, tmp_path):
    out = pipe(num_models=3, num_inference_steps=4, output_type="peft", generator=torch.Generator().manual_seed(0))
    adapters = out.params
    assert isinstance(adapters, GeneratedAdapters) and len(adapters) == 3
    same = pipe(num_models=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).params
    assert torch.equal(adapters.vectors, same)  # deterministic under a seed, same vectors as output_type="pt"
    sds = out.state_dicts()  # the output's generic accessors read the adapters' vectors
    assert len(sds) == 3 and all(torch.equal(sds[1][k], v) for k, v in adapters.state_dict(1).items())
    folders = adapters.save_pretrained(tmp_path / "adapters")
    assert [f.name for f in folders] == ["adapter_000", "adapter_001", "adapter_002"]
    assert sorted(p.name for p in folders[0].iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    ids, _ = _data(16, 5)
    for i, folder in enumerate(folders):
        config, state = load_adapter(folder)
        assert config == json.loads((folder / "adapter_config.json").read_text()) and config["r"] == 4
        assert all(torch.equal(state[k], v) for k, v in adapters.state_dict(i).items()) and len(state) == 10
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(pipe.target), str(folder)).eval()
        rng = torch.get_rng_state()
        in_memory = adapters[i]
        assert torch.equal(torch.get_rng_state(), rng)  # building an adapter leaves the global random state alone
        assert type(in_memory) is type(reloaded)
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, in_memory(input_ids=ids).logits)
    with torch.no_grad():  # generated adapters differ from each other
        assert not torch.equal(adapters[0](input_ids=ids).logits, adapters[1](input_ids=ids).logits)


def test_saved_pipeline_keeps_the_adapter_config_with_its_target(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = PDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert getattr(loaded.target.config, PEFT_CONFIG_KEY) == getattr(pipe.target.config, PEFT_CONFIG_KEY)
    kwargs = dict(num_models=2, num_inference_steps=3, output_type="peft")
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).params
    b = loaded(**kwargs, generator=torch.Generator().manual_seed(1)).params
    ids, _ = _data(8, 6)
    with torch.no_grad():
        assert torch.equal(a[1](input_ids=ids).logits, b[1](input_ids=ids).logits)


def test_a_base_model_without_the_target_modules_is_a_named_error(trained, pipe, tmp_path):
    model, layout, params = trained
    config = getattr(pipe.target.config, PEFT_CONFIG_KEY)
    shallow = _base(num_hidden_layers=1)  # no layer 1: its query/value modules are missing
    setattr(shallow.config, PEFT_CONFIG_KEY, config)
    with pytest.raises(PeftLayoutError, match=r"missing \['bert.encoder.layer.1.attention.self.query'"):
        check_peft_output(layout, shallow)
    with pytest.raises(PeftLayoutError, match="missing"):  # before any training
        fit_pdiff(params, layout, PDiffConfig(ae_steps=1, denoiser_steps=1), progress=False, target=shallow)
    narrow = _base(hidden_size=16)
    setattr(narrow.config, PEFT_CONFIG_KEY, config)
    with pytest.raises(PeftLayoutError, match="shape mismatch"):
        pipe.set_target(narrow)
    with pytest.raises(PeftLayoutError, match="without one"):  # a base model without an adapter config
        GeneratedAdapters(_base(), layout, params)
    unreadable = copy.deepcopy(pipe.target)
    setattr(unreadable.config, PEFT_CONFIG_KEY, {**config, "peft_type": "NOT_A_PEFT_METHOD"})
    with pytest.raises(PeftLayoutError, match="cannot read"):
        check_peft_output(layout, unreadable)
    with pytest.raises(PeftLayoutError, match="found target=None"):
        check_peft_output(layout, None)
    with pytest.raises(PeftLayoutError, match="peft_target"):  # the PeftModel itself is not a target
        pipe.set_target(model)
    assert isinstance(PeftLayoutError("x"), LayoutMismatchError)
    with pytest.raises(PeftLayoutError, match="adapter_model.safetensors"):
        load_adapter(tmp_path)
