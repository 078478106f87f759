"""Model and dataset cards, rendered from ``hub_cards/*.md`` through ``huggingface_hub``'s card templates.

A model card shows the target network and its parameter selection (one row per tensor of the generated vector), the
checkpoint dataset it was trained on, the training settings, the evaluation table (original checkpoints, generated
models, baselines), the novelty figures and how to load the pipeline. A dataset card lists every config (one per
architecture / parameter selection) with its layout.

Credentials never reach a card: training settings lose every key that names a token, secret, password or API key,
and known tokens (the given one, ``HF_TOKEN``, the saved login) are replaced by ``***`` in the rendered text.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData, get_token
from torch import nn

from .. import __version__
from ..checkpoints import PARAMS_COLUMN
from ..errors import PDiffError
from ..layout import ParamLayout
from .repo import LAYOUT_DIR, endpoint_url

CARD_LIBRARY_NAME = "diffusers"  # `library_name` in the card metadata: the Hub shows diffusers loading snippets
DEFAULT_LICENSE = "apache-2.0"
MODEL_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "diffusers", "neural-network-diffusion")
DATASET_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "model-checkpoints")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|authorization", re.IGNORECASE)
_MAX_LAYOUT_ROWS = 64  # a card lists at most this many tensors; the layout file has them all
_SUMMARY_KEYS = ("count", "best", "mean", "median", "min", "std")
# Keys of a results.json that are not results: the run's settings (shown as training settings) and its selection.
_NOT_RESULTS = ("original", "generated", "baselines", "novelty", "config", "selection", "training_args", "plots")
# Config keys of the components shown among the training settings.
_AUTOENCODER_SETTINGS = (
    "in_dim", "block_out_channels", "latent_channels", "pos_channels", "input_noise", "latent_noise", "norm_mode",
    "scaling_factor",
)
_DENOISER_SETTINGS = (
    "block_out_channels", "layers_per_block", "num_train_timesteps", "beta_schedule", "prediction_type", "sample_abs_max"
)


# ----------------------------------------------------------------------------------------------------- secrets
def _known_secrets(token: Any = None) -> list[str]:
    """Every token this process could send, longest first (so a token containing another is replaced whole)."""
    secrets = [token] if isinstance(token, str) else []
    secrets += [os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")]
    secrets.append(get_token())
    return sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)


def redact(text: str, token: Any = None) -> str:
    """``text`` with every known access token (the given one, ``HF_TOKEN``, the saved login) and any
    ``Bearer …`` credential replaced by ``***``."""
    for secret in _known_secrets(token):
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def sanitize_training_args(args: Any, token: Any = None) -> dict[str, Any]:
    """Training settings safe to publish: an ``argparse.Namespace`` / dataclass / mapping as a flat dict
    (nested mappings become ``outer.inner`` keys) without credentials (keys naming tokens, secrets, passwords,
    API keys) and with known tokens redacted from values."""
    if args is None:
        return {}
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        args = dataclasses.asdict(args)
    elif not isinstance(args, Mapping):
        args = vars(args)
    out: dict[str, Any] = {}
    for key, value in args.items():
        if _SECRET_KEY.search(str(key)):
            continue
        if isinstance(value, Mapping):
            for sub_key, sub_value in sanitize_training_args(value, token).items():
                out[f"{key}.{sub_key}"] = sub_value
            continue
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            value = redact(value, token)
        elif not isinstance(value, (int, float, bool, type(None))):
            value = redact(str(value), token)
        out[str(key)] = value
    return out


# ------------------------------------------------------------------------------------------------ formatting
def _template(name: str) -> str:
    return resources.files("pdiff_hf.hub_cards").joinpath(name).read_text(encoding="utf-8")


def _fmt(value: Any) -> str:
    """One table cell: floats to 6 significant digits, lists inline, ``|`` and newlines escaped."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


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


def describe_architecture(target: Any) -> str | None:
    """A one-line description of a target network: a string as it is, a module as ``ClassName(config)`` (or
    ``ClassName (N parameters)`` without a config)."""
    if target is None:
        return None
    if isinstance(target, str):
        return target
    if isinstance(target, nn.Module):
        name = type(target).__name__
        config = getattr(target, "config", None)
        if isinstance(config, Mapping):
            items = ", ".join(f"{k}={v!r}" for k, v in config.items() if not str(k).startswith("_"))
            return f"{name}({items})"
        count = sum(p.numel() for p in target.parameters())
        return f"{name} ({count:,} parameters)"
    return type(target).__name__


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
                f"expected results[{key!r}] to be a summary mapping ({', '.join(_SUMMARY_KEYS)}), "
                f"found {results[key]!r}"
            )
    return dict(results)


def _fmt_summary(summary: Mapping, key: str) -> str:
    value = summary.get(key)
    if value is None:
        return "–"
    if key == "count" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return _fmt(value)
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _flatten(prefix: str, value: Any, out: list[dict[str, str]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        out.append({"name": prefix, "value": f"[{len(value)} values]"})
    else:
        out.append({"name": prefix, "value": _fmt(value)})


def _results_context(results: Mapping | None) -> dict[str, Any]:
    """Template variables of the evaluation: ``results_rows`` (one per model group), ``novelty_rows`` and
    ``other_results`` (every other key of the results, flattened)."""
    if not results:
        return {"results_rows": [], "novelty_rows": [], "other_results": []}
    rows = []
    labels = {"original": "Original checkpoints (training data)", "generated": "p-diff generated"}
    for key in ("original", "generated"):
        if isinstance(results.get(key), Mapping):
            rows.append({"label": labels[key], **{k: _fmt_summary(results[key], k) for k in _SUMMARY_KEYS}})
    baselines = results.get("baselines") or {}
    if isinstance(baselines, Mapping):
        for name, summary in baselines.items():
            if isinstance(summary, Mapping):
                rows.append({"label": _fmt(name), **{k: _fmt_summary(summary, k) for k in _SUMMARY_KEYS}})
    novelty: list[dict[str, str]] = []
    if results.get("novelty") is not None:
        _flatten("", results["novelty"], novelty)
    other: list[dict[str, str]] = []
    for key, value in results.items():
        if key not in _NOT_RESULTS:
            _flatten(str(key), value, other)
    return {"results_rows": rows, "novelty_rows": novelty, "other_results": other}


def _component_settings(pipe) -> list[dict[str, str]]:
    """The pipeline's model sizes and diffusion settings, one ``{name, value}`` row each."""
    rows = []
    ae, den, sched = pipe.autoencoder.config, pipe.denoiser.config, pipe.scheduler
    for key in _AUTOENCODER_SETTINGS:
        if key in ae:
            rows.append({"name": f"autoencoder.{key}", "value": _fmt(ae[key])})
    rows.append({"name": "autoencoder.latent_shape", "value": _fmt(list(pipe.autoencoder.latent_shape))})
    for key in _DENOISER_SETTINGS:
        if key in den:
            rows.append({"name": f"denoiser.{key}", "value": _fmt(den[key])})
    rows.append({"name": "scheduler", "value": type(sched).__name__})
    params = sum(p.numel() for p in pipe.autoencoder.parameters()) + sum(p.numel() for p in pipe.denoiser.parameters())
    rows.append({"name": "model parameters (autoencoder + denoiser)", "value": f"{params:,}"})
    return rows


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
) -> ModelCard:
    """The model card of ``pipe``, rendered from ``hub_cards/model_card.md`` (or ``template_path``) through
    ``huggingface_hub.ModelCard.from_template``: target architecture and parameter selection, checkpoint dataset,
    training settings, evaluation table, novelty figures and usage. Credentials never enter the card."""
    results = load_results(results)
    if training_args is None and results:  # a demo's results.json records the run's settings
        training_args = results.get("training_args") or results.get("config")
    settings = sanitize_training_args(training_args, token)
    selection = (results or {}).get("selection")
    selection_name = selection.get("name") if isinstance(selection, Mapping) else selection
    architecture = describe_architecture(target_architecture)
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
        selection_name=_fmt(selection_name) if selection_name else None,
        checkpoint_dataset_id=checkpoint_dataset_id,
        checkpoint_dataset_config=checkpoint_dataset_config,
        training_rows=[{"name": k, "value": _fmt(v)} for k, v in settings.items()],
        component_rows=_component_settings(pipe),
        pdiff_hf_version=__version__,
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
) -> DatasetCard:
    """The dataset card of a checkpoint dataset repo from ``hub_cards/dataset_card.md`` (or ``template_path``).

    Args:
        configs: ``{config name: layout document}`` for every config of the repo (the documents written to
            ``param_layouts/<config>.json``: ``architecture``, ``num_checkpoints``, ``columns``, ``param_layout``).
        existing: metadata of the card already in the repo; ``datasets`` writes its ``configs`` / ``dataset_info``
            there when pushing data, and they must survive (``load_dataset(repo, config)`` reads them).
    """
    data = dict(existing or {})
    data["license"] = data.get("license") or license
    data["tags"] = sorted(set(data.get("tags") or []) | set(DATASET_TAGS))
    data.setdefault("pretty_name", f"p-diff checkpoints: {repo_id.split('/')[-1]}")
    summary = [
        {"name": name, "doc": doc, **layout_context(ParamLayout.from_list(doc["param_layout"]))}
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
    )
    text = redact(str(card), token)
    return DatasetCard(text) if text != str(card) else card
