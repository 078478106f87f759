"""``pdiff_hf.hub.cards``: model and dataset cards and the secret filtering of training settings (no Hub needed)."""

import argparse
import json
from dataclasses import dataclass

import pytest
from torch import nn

from pdiff_hf import ParamLayout, PDiffError
from pdiff_hf.hub import (
    build_dataset_card,
    build_model_card,
    collection_recipe,
    describe_architecture,
    load_results,
    redact,
    results_document,
    sanitize_training_args,
    target_hub_id,
)

TOKEN = "hf_cardtesttoken0123456789abcdef"
RESULTS = {
    "original": {"count": 24, "best": 91.25, "mean": 88.5, "median": 88.75, "min": 80.0, "std": 2.5},
    "generated": {"count": 10, "best": 92.5, "mean": 89.125, "median": 89.0, "min": 85.0, "std": 1.75},
    "baselines": {"noise-perturbed": {"count": 10, "best": 70.0, "mean": 60.0, "median": 61.0, "min": 40.0, "std": 9.0}},
    "novelty": {"max_similarity_to_original": 0.875, "mean_similarity_to_original": 0.7},
    "verdict": ["Accuracy: generated mean 89.12% vs original mean 88.50%.", "Verdict: NOVEL - the generated models differ."],
}


@pytest.fixture
def env_token(monkeypatch):
    """A token in ``HF_TOKEN`` that no card may contain, even where it was not passed explicitly."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def test_redact_replaces_known_tokens_and_bearer_credentials(env_token):
    text = redact(f"Authorization: Bearer abc; token={env_token}; other=hf_given123", token="hf_given123")
    assert env_token not in text and "abc" not in text and "hf_given123" not in text
    assert text.count("***") == 3


def test_sanitize_training_args_drops_credential_keys(env_token):
    args = argparse.Namespace(hub_token=env_token, lr=0.1, nested={"api_key": "k", "depth": 2}, note=f"token {env_token}")
    assert sanitize_training_args(args) == {"lr": 0.1, "nested.depth": 2, "note": "token ***"}

    @dataclass
    class Args:
        password: str = "p"
        epochs: int = 3

    assert sanitize_training_args(Args()) == {"epochs": 3}
    assert sanitize_training_args(None) == {}


def test_describe_architecture():
    assert describe_architecture("MLP(hidden=8)") == "MLP(hidden=8)"
    assert describe_architecture(nn.Linear(2, 3)) == "Linear (9 parameters)"
    assert describe_architecture(None) is None


def test_load_results_from_file_and_bad_input(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    assert load_results(path) == RESULTS
    with pytest.raises(PDiffError, match="expected results as a mapping"):
        load_results([1, 2])
    with pytest.raises(PDiffError, match=r"expected results\['generated'\] to be a summary mapping"):
        load_results({"generated": 3})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PDiffError, match="unreadable file"):
        load_results(tmp_path / "broken.json")


def test_model_card_metadata_and_contents(tiny_pipeline, bn_mlp, env_token):
    training_args = {"learning_rate": 1e-3, "epochs": 3, "hub_token": env_token, "output_dir": f"/runs/{env_token}"}
    card = build_model_card(
        tiny_pipeline,
        "tester/pdiff-tiny",
        checkpoint_dataset_id="tester/ckpts",
        checkpoint_dataset_config="cfg-1",
        results=RESULTS,
        training_args=training_args,
        target_architecture=bn_mlp,
    )
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "apache-2.0"
    assert {"p-diff", "parameter-generation"} <= set(data["tags"]) and data["datasets"] == ["tester/ckpts"]
    text = card.text
    for needle in [
        "tester/pdiff-tiny",
        f"D = {tiny_pipeline.layout.dim}",
        "`1.weight` | [8]",
        "`4.running_var` | [8]",
        "Sequential",  # target architecture
        "config `cfg-1`",
        "| learning_rate | 0.001 |",
        "| epochs | 3 |",
        "| output_dir | /runs/*** |",
        "| Original checkpoints (training data) | 24 | 91.25 | 88.50 | 88.75 | 80.00 | 2.50 |",
        "| p-diff generated | 10 | 92.50 | 89.12 | 89.00 | 85.00 | 1.75 |",
        "| noise-perturbed | 10 | 70.00 |",
        "### Verdict\n\nAccuracy: generated mean 89.12% vs original mean 88.50%. Verdict: NOVEL - the generated models differ.",
        "is in\n[`results.json`](",
        'PDiffPipeline.from_pretrained("tester/pdiff-tiny")',
        "out.load_into(your_model, 0)",
        "This repo holds no target network: you supply your_model",
        'DiffusionPipeline.from_pretrained("tester/pdiff-tiny", trust_remote_code=True)',
    ]:
        assert needle in text, needle
    assert "hub_token" not in text and env_token not in str(card)
    # raw statistics stay out of the card: they go to results.json
    assert "max_similarity_to_original" not in text and "0.875" not in text and "output_type=\"model\"" not in text


def test_results_document_keeps_every_statistic_without_credentials(env_token):
    results = {**RESULTS, "config": {"epochs": 3, "hub_token": env_token}, "timings_s": {"total": 1.5}, "note": env_token}
    document = json.loads(results_document(results))
    assert document["novelty"] == RESULTS["novelty"] and document["timings_s"] == {"total": 1.5}
    assert document["config"] == {"epochs": 3} and document["note"] == "***"
    assert results_document(None) is None


def test_model_card_of_a_transformers_target(tiny_pipeline_factory, tiny_vit):
    from pdiff_hf import PDiffPipeline

    layout = ParamLayout.from_module(tiny_vit, include="classifier.*")
    pipe, _ = tiny_pipeline_factory(layout)
    tiny_vit.config._name_or_path = "google/vit-base-patch16-224"  # as from_pretrained("google/...") sets it
    pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, target=tiny_vit)
    many = {**RESULTS, "baselines": {f"noise-{i}": RESULTS["baselines"]["noise-perturbed"] for i in range(6)}}
    text = build_model_card(pipe, "tester/vit-heads", results=many).text
    architecture = next(line for line in text.splitlines() if line.startswith("| Target architecture |"))
    assert "ViTForImageClassification (vit: hidden_size=16, num_hidden_layers=1, num_attention_heads=2" in architecture
    assert "image_size=8, patch_size=4" in architecture and "num_labels=3" in architecture
    assert "| Target weights from | [`google/vit-base-patch16-224`](" in text
    assert "yes, in `target/`: `output_type=\"model\"` gives working `ViTForImageClassification` networks" in text
    usage = text.split("## Usage")[1].split("## Files")[0]
    assert 'pipe = PDiffPipeline.from_pretrained("tester/vit-heads")' in usage
    assert 'out = pipe(num_models=4, output_type="model", generator=torch.Generator().manual_seed(0))' in usage
    assert "net = out.models[0]" in usage and "load_into" not in usage and "your_model" not in usage
    assert "- `target/`: the target network" in text and "- `results.json`" in text
    assert "| noise-3 |" in text and "| noise-4 |" not in text and "… and 2 more baselines in `results.json`" in text
    tiny_vit.config._name_or_path = "/tmp/some/local/folder"
    assert target_hub_id(tiny_vit) is None and target_hub_id(nn.Linear(2, 3)) is None


def test_model_card_reads_settings_and_selection_from_a_demo_results_file(tiny_pipeline):
    results = {**RESULTS, "config": {"epochs": 7, "target_architecture": "MNIST1DCNN(channels=32)"}, "selection": {"name": "last-2-norm"}}
    text = build_model_card(tiny_pipeline, "tester/x", results=results).text
    assert "| epochs | 7 |" in text and "| Selection | last-2-norm |" in text
    assert "| Target architecture | MNIST1DCNN(channels=32) |" in text


def test_model_card_without_results_or_dataset(tiny_pipeline):
    text = build_model_card(tiny_pipeline).text
    assert "No evaluation results were recorded" in text and "checkpoint dataset was not recorded" in text
    assert "results.json" not in text and "### Verdict" not in text


def test_dataset_card_lists_every_config_and_keeps_existing_metadata(env_token):
    layout = ParamLayout.from_module(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4)), include="1.*")
    doc = {"architecture": "toy", "num_checkpoints": 5, "columns": ["params", "step"], "param_layout": layout.to_list()}
    existing = {"configs": [{"config_name": "a", "data_files": "a/*.parquet"}], "tags": ["mine"]}
    card = build_dataset_card("tester/ckpts", {"b": doc, "a": {**doc, "architecture": env_token}}, existing)
    data = card.data.to_dict()
    assert data["configs"] == existing["configs"] and {"mine", "p-diff", "model-checkpoints"} <= set(data["tags"])
    assert data["license"] == "apache-2.0" and data["pretty_name"] == "p-diff checkpoints: ckpts"
    assert card.text.index("### `a`") < card.text.index("### `b`")
    assert "`1.weight`" in card.text and "`param_layouts/b.json`" in card.text
    assert env_token not in str(card)
    assert "How it was collected: Each row holds the selected tensors of toy (D = 8), collected without run metadata." in card.text


def test_dataset_card_links_models_and_states_the_recipe():
    layout = ParamLayout.from_module(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4)), include="1.*")
    doc = {"architecture": "toy", "num_checkpoints": 8, "columns": ["params", "step", "epoch", "run_id", "seed", "eval_accuracy"],
           "param_layout": layout.to_list()}  # fmt: skip
    card = build_dataset_card("tester/ckpts", {"a": doc}, {"tags": ["mine"]}, model_id="tester/pdiff-toy")
    assert card.data.to_dict()["pdiff_models"] == ["tester/pdiff-toy"]
    assert "p-diff models trained on these checkpoints: [`tester/pdiff-toy`](" in card.text
    assert ("How it was collected: Each row holds the selected tensors of toy (D = 8), saved during training runs: one "
            "row per saved step of a run (`run_id`, `step`); the seed of each run is in `seed`; evaluated as "
            "`eval_accuracy`.") in card.text  # fmt: skip
    # a later push (of another config or another model) keeps the models already linked
    again = build_dataset_card("tester/ckpts", {"a": doc}, card.data.to_dict(), model_id="tester/pdiff-other")
    assert again.data.to_dict()["pdiff_models"] == ["tester/pdiff-toy", "tester/pdiff-other"]
    assert collection_recipe({**doc, "recipe": "Fine-tuning runs, one per seed."}) == "Fine-tuning runs, one per seed."
    hub = collection_recipe({**doc, "columns": ["params", "repo_id", "revision"]})
    assert "read from Hub model repos (`repo_id`, at the commit in `revision`)" in hub
