"""Model and dataset cards, rendered from ``hub_cards/*.md`` through ``huggingface_hub``'s card templates.

A model card shows the target network and its parameter selection (one row per tensor of the generated vector), the
checkpoint dataset it was trained on, the training settings, a short evaluation table (original checkpoints, generated
models, baselines), the verdict as prose and how to get working networks from the repo; the raw statistics go to the
repo's ``results.json``. A dataset card lists every config (one per architecture / parameter selection) with its
layout and how its rows were collected (for a conditional dataset: which task each condition id is), and links to
the p-diff models trained on it (``pdiff_models`` in its metadata, kept when more configs are pushed).

Credentials never reach a card: training settings lose every key that names a token, secret, password or API key,
and known tokens (the given one, ``HF_TOKEN``, the saved login) are replaced by ``***`` in the rendered text.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
from torch import nn

from .. import __version__
from ..checkpoints.dataset import PARAMS_COLUMN
from ..errors import HubError, PDiffError
from ..layout import ParamLayout
from .card_format import SUMMARY_KEYS, format_cell, format_summary_value
from .condition_cards import (
    conditional_results_context,
    conditions_sentence,
    is_conditional_results,
)
from .repo import LAYOUT_DIR, check_repo_id, endpoint_url
from .secrets import redact, sanitize_training_args

CARD_LIBRARY_NAME = "diffusers"  # `library_name` in the card metadata: the Hub shows diffusers loading snippets
DEFAULT_LICENSE = "apache-2.0"
MODEL_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "diffusers", "neural-network-diffusion")
DATASET_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "model-checkpoints")
_MAX_LAYOUT_ROWS = 64  # a card lists at most this many tensors; the layout file has them all
# Config keys of the components shown among the training settings.
_AUTOENCODER_SETTINGS = (
    "in_dim", "block_out_channels", "latent_channels", "pos_channels", "input_noise", "latent_noise", "norm_mode",
    "scaling_factor",
)
_DENOISER_SETTINGS = (
    "block_out_channels", "layers_per_block", "num_train_timesteps", "beta_schedule", "prediction_type", "sample_abs_max"
)
# Size settings of a transformers config shown as the target architecture (those the config has).
_TRANSFORMERS_SUMMARY = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_sizes", "depths",
    "image_size", "patch_size", "num_channels", "vocab_size", "max_position_embeddings",
)
_MAX_BASELINE_ROWS = 4  # the card's results table shows at most this many baselines; results.json has them all
# Column names of a checkpoint dataset and what they say about how its rows were collected.
_RECIPE_COLUMNS = (
    (("run_id", "step"), "saved during training runs: one row per saved step of a run (`run_id`, `step`)"),
    (("repo_id",), "read from Hub model repos (`repo_id`, at the commit in `revision`)"),
    (("file",), "read from checkpoint files (`file`)"),
    (("seed",), "the seed of each run is in `seed`"),
)


# ------------------------------------------------------------------------------------------------ formatting
def _template(name: str) -> str:
    return resources.files("pdiff_hf.hub_cards").joinpath(name).read_text(encoding="utf-8")


def layout_context(layout: ParamLayout | None) -> dict[str, Any]:
    """Template variables describing a parameter layout: ``dim`` (D), ``num_tensors``, ``tensor_kinds``, one
    ``layout_rows`` entry per tensor (index, name, shape, dtype, kind, numel; at most 64) and ``layout_modules``."""
    rows = [
        {"index": i, "name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind, "numel": s.numel}
        for i, s in enumerate(layout.specs if layout is not None else [])
    ]
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return {
        "dim": layout.dim if layout else None,
        "num_tensors": len(rows),
        "tensor_kinds": ", ".join(f"{k}s: {n}" for k, n in kinds.items()),
        "layout_rows": rows[:_MAX_LAYOUT_ROWS],
        "layout_truncated": max(0, len(rows) - _MAX_LAYOUT_ROWS),
        "layout_modules": sorted({r["name"].rsplit(".", 1)[0] if "." in r["name"] else r["name"] for r in rows}),
    }


def _is_transformers_config(config: Any) -> bool:
    """A transformers model config (``PretrainedConfig``, ``PreTrainedConfig`` from transformers 5), without importing
    transformers."""
    return any(
        c.__name__ in ("PretrainedConfig", "PreTrainedConfig") and c.__module__.startswith("transformers.")
        for c in type(config).__mro__
    )


def describe_architecture(target: Any) -> str | None:
    """A one-line description of a target network: a string as it is; a diffusers model as ``ClassName(config)``; a
    transformers model as ``ClassName (model_type: size settings; N parameters)``; another module as
    ``ClassName (N parameters)``."""
    if target is None:
        return None
    if isinstance(target, str):
        return target
    if isinstance(target, nn.Module):
        name = type(target).__name__
        config = getattr(target, "config", None)
        if config is None:  # a PyTorchModelHubMixin records its init arguments here
            config = getattr(target, "_hub_mixin_config", None)
        count = sum(p.numel() for p in target.parameters())
        if _is_transformers_config(config):
            items = ", ".join(f"{k}={getattr(config, k)!r}" for k in _TRANSFORMERS_SUMMARY if hasattr(config, k))
            num_labels = getattr(config, "num_labels", None) if "ForSequenceClassification" in name or "ForImage" in name else None
            items += f", num_labels={num_labels}" if num_labels is not None else ""
            return f"{name} ({config.model_type}: {items}; {count:,} parameters)"
        if isinstance(config, Mapping):
            items = ", ".join(f"{k}={v!r}" for k, v in config.items() if not str(k).startswith("_"))
            return f"{name}({items})"
        return f"{name} ({count:,} parameters)"
    return type(target).__name__


def target_hub_id(target: Any) -> str | None:
    """The Hub repo a transformers target was loaded from (``config._name_or_path`` when it reads ``owner/name`` and
    is not a local folder), else ``None``."""
    config = getattr(target, "config", None)
    name = getattr(config, "_name_or_path", None) if _is_transformers_config(config) else None
    if not isinstance(name, str) or os.path.exists(name):
        return None
    try:
        return check_repo_id(name)  # huggingface_hub's validate_repo_id, with the owner
    except HubError:
        return None


# --------------------------------------------------------------------------------------------------- results
def load_results(results: None | str | os.PathLike | Mapping) -> dict[str, Any] | None:
    """Evaluation results as a dict (from a mapping or a ``results.json`` path) with ``original`` / ``generated``
    summaries (``count, best, mean, median, min, std``) and optional ``baselines`` / ``novelty``."""
    if results is None:
        return None
    if isinstance(results, (str, os.PathLike)):
        try:
            results = json.loads(Path(results).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise PDiffError(f"expected a JSON results file at {results}, found an unreadable file ({err})") from None
    if not isinstance(results, Mapping):
        raise PDiffError(
            f"expected results as a mapping with 'original' and 'generated', found {type(results).__name__}"
        )
    for key in ("original", "generated"):
        if key in results and not isinstance(results[key], Mapping):
            raise PDiffError(
                f"expected results[{key!r}] to be a summary mapping ({', '.join(SUMMARY_KEYS)}), "
                f"found {results[key]!r}"
            )
    return dict(results)


def _verdict(results: Mapping) -> list[str]:
    """The verdict lines of a results.json (``verdict``, as the novelty report writes them); computed from the raw
    novelty statistics when only those are there."""
    verdict = results.get("verdict")
    if isinstance(verdict, str):
        return [verdict]
    if isinstance(verdict, (list, tuple)):
        return [str(v) for v in verdict]
    if isinstance(results.get("novelty"), Mapping) and "groups" in results["novelty"]:
        from ..novelty import novelty_verdict

        try:
            return novelty_verdict(results)
        except (KeyError, TypeError, ValueError):
            return []
    return []


def _results_context(results: Mapping | None) -> dict[str, Any]:
    """Template variables of the evaluation: ``results_rows`` (original, generated and up to 4 baselines),
    ``more_baselines`` (how many were left out) and ``verdict`` (prose). The raw statistics stay in results.json."""
    if not results:
        return {"results_rows": [], "more_baselines": 0, "verdict": []}
    if is_conditional_results(results):
        return conditional_results_context(results)
    rows = []
    labels = {"original": "Original checkpoints (training data)", "generated": "p-diff generated"}
    for key in ("original", "generated"):
        if isinstance(results.get(key), Mapping):
            rows.append({"label": labels[key], **{k: format_summary_value(results[key], k) for k in SUMMARY_KEYS}})
    baselines = results.get("baselines") or {}
    baselines = [(n, b) for n, b in baselines.items() if isinstance(b, Mapping)] if isinstance(baselines, Mapping) else []
    for name, summary in baselines[:_MAX_BASELINE_ROWS]:
        rows.append({"label": format_cell(name), **{k: format_summary_value(summary, k) for k in SUMMARY_KEYS}})
    return {
        "results_rows": rows,
        "more_baselines": max(0, len(baselines) - _MAX_BASELINE_ROWS),
        "verdict": [line.replace("\n", " ") for line in _verdict(results)],
    }


def results_document(results: None | str | os.PathLike | Mapping, token: Any = None) -> str | None:
    """The ``results.json`` uploaded next to the card: the results as given (every statistic the card leaves out),
    with the run's settings (``config`` / ``training_args``) cleaned of credentials and known tokens redacted."""
    results = load_results(results)
    if not results:
        return None
    clean = dict(results)
    for key in ("config", "training_args"):
        if isinstance(clean.get(key), Mapping) or dataclasses.is_dataclass(clean.get(key)):
            clean[key] = sanitize_training_args(clean[key], token)
    return redact(json.dumps(clean, indent=2, default=str), token) + "\n"


def _component_settings(pipe) -> list[dict[str, str]]:
    """The pipeline's model sizes and diffusion settings, one ``{name, value}`` row each."""
    rows = []
    ae, den, sched = pipe.autoencoder.config, pipe.denoiser.config, pipe.scheduler
    for key in _AUTOENCODER_SETTINGS:
        if key in ae:
            rows.append({"name": f"autoencoder.{key}", "value": format_cell(ae[key])})
    rows.append({"name": "autoencoder.latent_shape", "value": format_cell(list(pipe.autoencoder.latent_shape))})
    for key in _DENOISER_SETTINGS:
        if key in den:
            rows.append({"name": f"denoiser.{key}", "value": format_cell(den[key])})
    if den.get("num_conditions"):  # a conditional pipeline: pipe(condition=...) takes these ids or names
        rows.append({"name": "denoiser.num_conditions", "value": format_cell(den["num_conditions"])})
        if den.get("condition_names"):
            rows.append({"name": "denoiser.condition_names", "value": format_cell(list(den["condition_names"]))})
    rows.append({"name": "scheduler", "value": type(sched).__name__})
    params = sum(p.numel() for p in pipe.autoencoder.parameters()) + sum(p.numel() for p in pipe.denoiser.parameters())
    rows.append({"name": "model parameters (autoencoder + denoiser)", "value": f"{params:,}"})
    return rows


def _target_kind(target) -> str:
    from .target import target_kind

    return target_kind(target)


def _target_load_args(class_name: str | None, kind: str | None) -> str:
    """What ``from_pretrained`` needs besides the repo id to build the target: nothing for a transformers or diffusers
    class (built by name), ``target_class=`` for a Hub mixin and ``target=`` for a plain module (code never comes from
    the repo)."""
    if kind == "hub_mixin":
        return f", target_class={class_name}"
    if kind == "plain":
        return f", target={class_name}(...)"
    return ""


# ------------------------------------------------------------------------------------------------------ cards
def build_model_card(
    pipe,
    repo_id: str | None = None,
    *,
    checkpoint_dataset_id: str | None = None,
    checkpoint_dataset_config: str | None = None,
    results: None | str | os.PathLike | Mapping = None,
    training_args: Any = None,
    target_architecture: Any = None,
    license: str = DEFAULT_LICENSE,
    token: Any = None,
    template_path: None | str | os.PathLike = None,
    endpoint: str | None = None,
    checkpoint_dataset_path: str | None = None,
) -> ModelCard:
    """The model card of ``pipe``, rendered from ``hub_cards/model_card.md`` (or ``template_path``) through
    ``huggingface_hub.ModelCard.from_template``: target architecture (``target_architecture``, else the pipeline's
    target, with its Hub id when it came from one) and parameter selection, checkpoint dataset, training settings,
    a short evaluation table, the verdict as prose, and a usage snippet that runs as written against ``repo_id``
    (``out.models[0]`` when the pipeline has a target; ``target_class=`` / ``target=`` for a Hub-mixin or plain
    target, whose code the repo does not carry). ``checkpoint_dataset_path``: a local checkpoint folder named when
    there is no dataset repo (a demo's ``checkpoints/``). The raw statistics go to ``results.json``
    (:func:`results_document`). Credentials never enter the card."""
    results = load_results(results)
    if training_args is None and results:  # a demo's results.json records the run's settings
        training_args = results.get("training_args") or results.get("config")
    settings = sanitize_training_args(training_args, token)
    selection = (results or {}).get("selection")
    selection_name = selection.get("name") if isinstance(selection, Mapping) else selection
    target = getattr(pipe, "target", None)
    # a loaded pipeline whose Hub-mixin or plain target was not built (its class is the user's) still carries it
    unbuilt = (getattr(pipe, "_unbuilt_target", None) or {}).get("record") if target is None else None
    if target is not None:
        target_class, kind = type(target).__name__, _target_kind(target)
    else:
        target_class, kind = (unbuilt["class_name"], unbuilt["kind"]) if unbuilt else (None, None)
    architecture = describe_architecture(target_architecture if target_architecture is not None else target)
    if architecture is None and unbuilt:
        architecture = unbuilt.get("architecture")
    if architecture is None:
        for key in ("target_architecture", "architecture", "target_model", "model_name", "target"):
            if settings.get(key):
                architecture = str(settings[key])
                break
    card_data = ModelCardData(
        library_name=CARD_LIBRARY_NAME,
        license=license,
        tags=list(MODEL_TAGS),
        datasets=[checkpoint_dataset_id] if checkpoint_dataset_id else None,
    )
    context = dict(
        repo_id=repo_id,
        hub_url=endpoint_url(endpoint),
        architecture=architecture,
        selection_name=format_cell(selection_name) if selection_name else None,
        checkpoint_dataset_id=checkpoint_dataset_id,
        checkpoint_dataset_config=checkpoint_dataset_config,
        checkpoint_dataset_path=checkpoint_dataset_path,
        training_rows=[{"name": k, "value": format_cell(v)} for k, v in settings.items()],
        component_rows=_component_settings(pipe),
        pdiff_hf_version=__version__,
        has_target=target_class is not None,
        target_class=target_class,
        target_has_code=kind == "custom",
        target_load_args=_target_load_args(target_class, kind),
        target_hub_id=target_hub_id(target) or target_hub_id(target_architecture),
        has_results_file=bool(results),
        **layout_context(pipe.layout),
        **_results_context(results),
    )
    template = Path(template_path).read_text(encoding="utf-8") if template_path else _template("model_card.md")
    card = ModelCard.from_template(card_data, template_str=template, **context)
    text = redact(str(card), token)
    return ModelCard(text) if text != str(card) else card


def build_dataset_card(
    repo_id: str,
    configs: Mapping[str, Mapping],
    existing: Mapping | None = None,
    *,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    template_path: None | str | os.PathLike = None,
    token: Any = None,
    model_id: str | None = None,
) -> DatasetCard:
    """The dataset card of a checkpoint dataset repo from ``hub_cards/dataset_card.md`` (or ``template_path``).

    Args:
        configs: ``{config name: layout document}`` for every config of the repo (the documents written to
            ``param_layouts/<config>.json``: ``architecture``, ``num_checkpoints``, ``columns``, ``param_layout``).
        existing: metadata of the card already in the repo; ``datasets`` writes its ``configs`` / ``dataset_info``
            there when pushing data, and they must survive (``load_dataset(repo, config)`` reads them).
        model_id: a p-diff model repo trained on this dataset, added to the ``pdiff_models`` metadata (the card links
            to every model listed there).
    """
    data = dict(existing or {})
    models = [m for m in data.get("pdiff_models") or [] if isinstance(m, str)]
    if model_id and model_id not in models:
        models.append(model_id)
    if models:
        data["pdiff_models"] = models
    data["license"] = data.get("license") or license
    data["tags"] = sorted(set(data.get("tags") or []) | set(DATASET_TAGS))
    data.setdefault("pretty_name", f"p-diff checkpoints: {repo_id.split('/')[-1]}")
    summary = [
        {"name": name, "doc": doc, "recipe": " ".join(filter(None, [collection_recipe(doc), conditions_sentence(doc)])),
         **layout_context(ParamLayout.from_list(doc["param_layout"]))}
        for name, doc in sorted(configs.items())
    ]
    template = Path(template_path).read_text(encoding="utf-8") if template_path else _template("dataset_card.md")
    card = DatasetCard.from_template(
        DatasetCardData(**data),
        template_str=template,
        repo_id=repo_id,
        configs_summary=summary,
        description=description,
        layout_dir=LAYOUT_DIR,
        params_column=PARAMS_COLUMN,
        pdiff_hf_version=__version__,
        models=models,
        hub_url=endpoint_url(None),
    )
    text = redact(str(card), token)
    return DatasetCard(text) if text != str(card) else card


def collection_recipe(doc: Mapping) -> str:
    """How the rows of a config were collected, in one sentence: the ``recipe`` of its layout document if it has one,
    else what its columns say (training steps of runs, Hub repos, files, evaluation metrics)."""
    if isinstance(doc.get("recipe"), str) and doc["recipe"].strip():
        return doc["recipe"].strip()
    columns = set(doc.get("columns") or [])
    parts = [text for needed, text in _RECIPE_COLUMNS if set(needed) <= columns]
    metrics = sorted(c for c in columns if c.startswith("eval_") or c.endswith(("_accuracy", "_loss")))
    if metrics:
        parts.append("evaluated as " + ", ".join(f"`{m}`" for m in metrics))
    arch = doc.get("architecture") or "the target network"
    how = "; ".join(parts) if parts else "collected without run metadata"
    return f"Each row holds the selected tensors of {arch} (D = {_dim_of(doc)}), {how}."


def _dim_of(doc: Mapping) -> Any:
    return doc.get("dim") or ParamLayout.from_list(doc["param_layout"]).dim
