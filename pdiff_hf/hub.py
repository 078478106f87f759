"""Hugging Face Hub integration: push and load p-diff pipelines and checkpoint datasets.

Pipelines
    :func:`push_pipeline` (also ``pipe.push_to_hub(repo_id)``) uploads a pipeline in diffusers format (safetensors
    weights) with a model card rendered from ``hub_cards/model_card.md``, a ``param_layout.json`` and self-contained
    code files, so that the repo loads both ways::

        PDiffPipeline.from_pretrained("owner/name", revision=..., cache_dir=..., token=..., local_files_only=...)
        DiffusionPipeline.from_pretrained("owner/name", trust_remote_code=True)   # without pdiff_hf installed

    :func:`load_pipeline` (behind ``PDiffPipeline.from_pretrained``) downloads a snapshot with
    ``huggingface_hub.snapshot_download`` — JSON and safetensors files only, never code or pickles — and builds the
    pipeline from pdiff_hf's own classes.

Checkpoint datasets
    :func:`push_checkpoint_dataset` pushes a checkpoint dataset as parquet shards, one dataset config per
    architecture / parameter selection, with a dataset card from ``hub_cards/dataset_card.md`` and the parameter
    layout in ``param_layouts/<config>.json``. ``datasets.load_dataset(repo_id, config)`` gives back the same rows;
    :func:`load_checkpoint_dataset` also re-attaches the layout.

Every Hub failure (missing repo / revision / file, no connection, refused token) is raised as
:class:`~pdiff_hf.errors.HubError` naming the repo, never with the access token in its message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import datasets
from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    hf_hub_download,
    snapshot_download,
)
from torch import nn

from . import __version__
from .checkpoints import PARAMS_COLUMN, checkpoint_params, get_layout, set_layout
from .errors import CheckpointDatasetError, DimensionMismatchError, HubError, LayoutMismatchError, PDiffError
from .layout import ParamLayout

try:  # huggingface_hub >= 0.24
    from huggingface_hub import errors as _hf_errors
except ImportError:  # pragma: no cover - older huggingface_hub
    from huggingface_hub import utils as _hf_errors

logger = logging.getLogger(__name__)

LIBRARY_NAME = "diffusers"
DEFAULT_LICENSE = "apache-2.0"
MODEL_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "diffusers", "neural-network-diffusion")
DATASET_TAGS = ("p-diff", "parameter-generation", "pdiff-hf", "model-checkpoints")
LAYOUT_FILE = "param_layout.json"
LAYOUT_DIR = "param_layouts"
COMPONENTS = {"autoencoder": "ParameterAutoencoder", "denoiser": "LatentUNet1DModel", "scheduler": None}
# What a pipeline download fetches: configs and safetensors. No code, no pickles.
PIPELINE_ALLOW_PATTERNS = ["model_index.json", "README.md", "*.json", "*.safetensors"]
# Files of an earlier push that a new push replaces (deleted when the new upload does not bring them again).
PIPELINE_DELETE_PATTERNS = ["*.py", "autoencoder/*", "denoiser/*", "scheduler/*"]
_SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|authorization", re.IGNORECASE)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_LAYOUT_ROWS = 64
# Files a checkpoint dataset repo may hold. datasets also has builders that unpickle (pandas .pkl, webdataset .pyd):
# load_checkpoint_dataset refuses repos with anything but parquet data and text metadata.
_SAFE_DATASET_SUFFIXES = (".parquet", ".json", ".md", ".txt", ".yaml", ".yml")
_SAFE_DATASET_NAMES = (".gitattributes", ".gitignore", "LICENSE")


# ----------------------------------------------------------------------------------------------------- secrets
def _known_secrets(token: Any = None) -> List[str]:
    secrets = [token] if isinstance(token, str) else []
    secrets += [os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")]
    try:
        from huggingface_hub import get_token

        secrets.append(get_token())
    except Exception:  # pragma: no cover - reading the saved token is best effort
        pass
    return sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)


def redact(text: str, token: Any = None) -> str:
    """``text`` with every known access token (the given one, ``HF_TOKEN``, the saved login) and any
    ``Bearer …`` credential replaced by ``***``."""
    for secret in _known_secrets(token):
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def sanitize_training_args(args: Any, token: Any = None) -> Dict[str, Any]:
    """Training settings safe to publish: an ``argparse.Namespace`` / dataclass / mapping as a flat dict without
    credentials (keys naming tokens, secrets, passwords, API keys) and with known tokens redacted from values."""
    if args is None:
        return {}
    if hasattr(args, "__dataclass_fields__"):
        import dataclasses

        args = dataclasses.asdict(args)
    elif not isinstance(args, Mapping):
        args = vars(args)
    out: Dict[str, Any] = {}
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


# ------------------------------------------------------------------------------------------------------- errors
def _chain(err: BaseException) -> List[BaseException]:
    out, todo = [], [err]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is o for o in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__]
    return out


def _is_transport_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return bool(
        names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError", "ProxyError"}
        or isinstance(err, (ConnectionRefusedError, ConnectionResetError, TimeoutError))
    )


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    message = getattr(err, "server_message", None) or (text.splitlines()[0] if text else "")
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _endpoint(endpoint: Optional[str]) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def _hf_error(name: str) -> tuple:
    cls = getattr(_hf_errors, name, None)
    return (cls,) if isinstance(cls, type) else ()


def _hub_error(
    err: BaseException,
    action: str,
    repo_id: str,
    repo_type: str,
    revision: Optional[str],
    endpoint: Optional[str],
    token: Any,
    local_files_only: bool = False,
) -> Optional[HubError]:
    """A :class:`HubError` for a huggingface_hub / datasets / network error, or ``None`` if ``err`` is none of those.
    The outermost recognized error of the exception chain decides the message."""
    where = f"{repo_type} repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    host = _endpoint(endpoint)
    chain = _chain(err)

    def classify(e: BaseException) -> Optional[str]:
        if isinstance(e, _hf_error("RevisionNotFoundError")):
            return f"revision {revision!r} does not exist in {repo_type} repo {repo_id!r} on {host}"
        if isinstance(e, _hf_error("RemoteEntryNotFoundError")):
            url = str(getattr(getattr(e, "response", None), "url", "") or "")
            missing = url.split("/resolve/", 1)[1].split("/", 1)[1] if "/resolve/" in url else "a requested file"
            return f"{where} has no file {missing}"
        if isinstance(e, _hf_error("GatedRepoError")):
            return f"{where} is gated; accept its conditions on {host} with the account of the token"
        if isinstance(e, _hf_error("RepositoryNotFoundError")) or type(e).__name__ == "DatasetNotFoundError":
            return (
                f"{repo_type} repo {repo_id!r} was not found on {host} (it does not exist, or it is private and no "
                "token with read access was given)"
            )
        if isinstance(e, _hf_error("LocalEntryNotFoundError")):
            transport = next((c for c in _chain(e) if _is_transport_error(c)), None)
            if transport is not None:
                return f"cannot connect to the Hub at {host} ({_describe(transport)}) and {where} is not cached"
            if local_files_only or constants.HF_HUB_OFFLINE:
                return f"{where} is not in the local cache and downloads are disabled (local_files_only=True or HF_HUB_OFFLINE=1)"
            return f"the Hub at {host} could not be reached and {where} is not cached"
        if _is_transport_error(e):
            return f"cannot connect to the Hub at {host} ({_describe(e)})"
        if isinstance(e, _hf_error("OfflineModeIsEnabled")):
            return f"{where} is not in the local cache and downloads are disabled (HF_HUB_OFFLINE=1)"
        if isinstance(e, _hf_error("HfHubHTTPError")):
            status = getattr(getattr(e, "response", None), "status_code", None)
            server = (getattr(e, "server_message", None) or "").strip().replace("\n", " ")
            if status == 401:
                return (
                    f"the Hub at {host} rejected the access token for {where} (401 Unauthorized); pass a valid token= "
                    "or log in with `hf auth login`"
                )
            if status == 403:
                return f"the access token may not write to {where} (403 Forbidden{': ' + server if server else ''})"
            return f"the Hub at {host} answered {status} for {where}{': ' + server if server else ''}"
        return None

    for e in chain:
        message = classify(e)
        if message is not None:
            return HubError(redact(f"could not {action}: {message}", token))
    return None


@contextlib.contextmanager
def _hub_errors(
    action: str,
    repo_id: str,
    repo_type: str = "model",
    revision: Optional[str] = None,
    endpoint: Optional[str] = None,
    token: Any = None,
    local_files_only: bool = False,
) -> Iterator[None]:
    """Turn Hub and network errors raised inside the block into :class:`HubError` (pdiff_hf errors pass through)."""
    try:
        yield
    except PDiffError:
        raise
    except Exception as err:
        hub_err = _hub_error(err, action, repo_id, repo_type, revision, endpoint, token, local_files_only)
        if hub_err is None:
            raise
        raise hub_err from None


def _check_repo_id(repo_id: str, what: str = "a Hub repo id") -> str:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(repo_id))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"expected {what} 'owner/name', found {str(repo_id)!r} ({reason})") from None
    if "/" not in str(repo_id):
        raise HubError(f"expected {what} 'owner/name' with the owner, found {str(repo_id)!r}")
    return str(repo_id)


def _api(token: Any = None, endpoint: Optional[str] = None) -> HfApi:
    return HfApi(endpoint=endpoint, token=token, library_name="pdiff-hf", library_version=__version__)


# --------------------------------------------------------------------------------------------------- templates
def _template(name: str) -> str:
    return resources.files("pdiff_hf.hub_cards").joinpath(name).read_text(encoding="utf-8")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _layout_rows(layout: Optional[ParamLayout]) -> List[Dict[str, Any]]:
    if layout is None:
        return []
    return [
        {"index": i, "name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind, "numel": s.numel}
        for i, s in enumerate(layout.specs)
    ]


def _layout_context(layout: Optional[ParamLayout]) -> Dict[str, Any]:
    rows = _layout_rows(layout)
    kinds: Dict[str, int] = {}
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


def describe_architecture(target: Any) -> Optional[str]:
    """A one-line description of a target network: a string as it is, a module as ``ClassName(config)``."""
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


_SUMMARY_KEYS = ("count", "best", "mean", "median", "min", "std")


def load_results(results: Union[None, str, os.PathLike, Mapping]) -> Optional[Dict[str, Any]]:
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
        raise PDiffError(f"expected results as a mapping with 'original' and 'generated', found {type(results).__name__}")
    for key in ("original", "generated"):
        if key in results and not isinstance(results[key], Mapping):
            raise PDiffError(f"expected results[{key!r}] to be a summary mapping ({', '.join(_SUMMARY_KEYS)}), found {results[key]!r}")
    return dict(results)


def _fmt_summary(summary: Mapping, key: str) -> str:
    value = summary.get(key)
    if value is None:
        return "–"
    if key == "count" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return _fmt(value)
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _flatten(prefix: str, value: Any, out: List[Dict[str, str]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        out.append({"name": prefix, "value": f"[{len(value)} values]"})
    else:
        out.append({"name": prefix, "value": _fmt(value)})


# Keys of a results.json that are not results: the run's settings (shown as training settings) and its selection.
_NOT_RESULTS = ("original", "generated", "baselines", "novelty", "config", "selection", "training_args")


def _results_context(results: Optional[Mapping]) -> Dict[str, Any]:
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
    novelty: List[Dict[str, str]] = []
    if results.get("novelty") is not None:
        _flatten("", results["novelty"], novelty)
    other: List[Dict[str, str]] = []
    for key, value in results.items():
        if key not in _NOT_RESULTS:
            _flatten(str(key), value, other)
    return {"results_rows": rows, "novelty_rows": novelty, "other_results": other}


def _component_settings(pipe) -> List[Dict[str, str]]:
    rows = []
    ae, den, sched = pipe.autoencoder.config, pipe.denoiser.config, pipe.scheduler
    for key in ("in_dim", "block_out_channels", "latent_channels", "pos_channels", "input_noise", "latent_noise", "norm_mode", "scaling_factor"):
        if key in ae:
            rows.append({"name": f"autoencoder.{key}", "value": _fmt(ae[key])})
    rows.append({"name": "autoencoder.latent_shape", "value": _fmt(list(pipe.autoencoder.latent_shape))})
    for key in ("block_out_channels", "layers_per_block", "num_train_timesteps", "beta_schedule", "prediction_type", "sample_abs_max"):
        if key in den:
            rows.append({"name": f"denoiser.{key}", "value": _fmt(den[key])})
    rows.append({"name": "scheduler", "value": type(sched).__name__})
    params = sum(p.numel() for p in pipe.autoencoder.parameters()) + sum(p.numel() for p in pipe.denoiser.parameters())
    rows.append({"name": "model parameters (autoencoder + denoiser)", "value": f"{params:,}"})
    return rows


def build_model_card(
    pipe,
    repo_id: Optional[str] = None,
    *,
    checkpoint_dataset_id: Optional[str] = None,
    checkpoint_dataset_config: Optional[str] = None,
    results: Union[None, str, os.PathLike, Mapping] = None,
    training_args: Any = None,
    target_architecture: Any = None,
    license: str = DEFAULT_LICENSE,
    token: Any = None,
    template_path: Union[None, str, os.PathLike] = None,
    endpoint: Optional[str] = None,
) -> ModelCard:
    """The model card of ``pipe``, rendered from ``hub_cards/model_card.md`` (or ``template_path``) through
    ``huggingface_hub.ModelCard.from_template``: target architecture and parameter selection, checkpoint dataset,
    training settings, evaluation table, novelty figures and usage. Credentials never enter the card."""
    layout = pipe.layout
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
        library_name=LIBRARY_NAME,
        license=license,
        tags=list(MODEL_TAGS),
        datasets=[checkpoint_dataset_id] if checkpoint_dataset_id else None,
    )
    context = dict(
        repo_id=repo_id,
        hub_url=_endpoint(endpoint),
        architecture=architecture,
        selection_name=_fmt(selection_name) if selection_name else None,
        checkpoint_dataset_id=checkpoint_dataset_id,
        checkpoint_dataset_config=checkpoint_dataset_config,
        training_rows=[{"name": k, "value": _fmt(v)} for k, v in settings.items()],
        component_rows=_component_settings(pipe),
        pdiff_hf_version=__version__,
        **_layout_context(layout),
        **_results_context(results),
    )
    template = Path(template_path).read_text(encoding="utf-8") if template_path else _template("model_card.md")
    card = ModelCard.from_template(card_data, template_str=template, **context)
    text = redact(str(card), token)
    return ModelCard(text) if text != str(card) else card


def save_for_hub(
    pipe,
    save_directory: Union[str, os.PathLike],
    *,
    repo_id: Optional[str] = None,
    remote_code: bool = True,
    **card_kwargs,
) -> Path:
    """Write what :func:`push_pipeline` uploads into ``save_directory``: ``save_pretrained`` output (safetensors),
    ``param_layout.json``, ``README.md`` and, with ``remote_code``, the self-contained code files and a
    ``model_index.json`` that points at them."""
    from diffusers import SchedulerMixin

    import diffusers

    folder = Path(save_directory)
    scheduler_cls = type(pipe.scheduler)
    if not isinstance(pipe.scheduler, SchedulerMixin) or getattr(diffusers, scheduler_cls.__name__, None) is not scheduler_cls:
        raise HubError(
            f"expected a diffusers scheduler class that loads by name, found {scheduler_cls.__module__}.{scheduler_cls.__name__}"
        )
    pipe.save_pretrained(folder, safe_serialization=True)
    index_path = folder / "model_index.json"
    if remote_code:
        from .remote_code import remote_code_files, remote_model_index

        for rel, source in remote_code_files().items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(source, encoding="utf-8")
        index = remote_model_index(json.loads(index_path.read_text(encoding="utf-8")))
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if pipe.layout is not None:
        (folder / LAYOUT_FILE).write_text(
            json.dumps({"param_layout": pipe.layout.to_list(), "dim": pipe.layout.dim}, indent=2) + "\n", encoding="utf-8"
        )
    card = build_model_card(pipe, repo_id, **card_kwargs)
    card.save(folder / "README.md")
    return folder


def push_pipeline(
    pipe,
    repo_id: str,
    token: Optional[str] = None,
    private: bool = False,
    checkpoint_dataset_id: Optional[str] = None,
    results: Union[None, str, os.PathLike, Mapping] = None,
    training_args: Any = None,
    commit_message: str = "Upload p-diff pipeline",
    *,
    checkpoint_dataset_config: Optional[str] = None,
    target_architecture: Any = None,
    license: str = DEFAULT_LICENSE,
    revision: Optional[str] = None,
    create_pr: bool = False,
    commit_description: Optional[str] = None,
    remote_code: bool = True,
    endpoint: Optional[str] = None,
    card_template: Union[None, str, os.PathLike] = None,
):
    """Upload ``pipe`` to the model repo ``repo_id`` (created if needed) with its model card and return the
    ``huggingface_hub.CommitInfo`` (``.commit_url``, ``.oid``, ``.repo_url``).

    Args:
        token: Hub access token; default ``HF_TOKEN`` or the saved login. It is never written to the card or logs.
        private: create the repo private (ignored when it exists).
        checkpoint_dataset_id / checkpoint_dataset_config: dataset repo (and config) of the training checkpoints,
            linked from the card and listed in its ``datasets`` metadata.
        results: evaluation summaries (mapping or path of a ``results.json``) with ``original`` and ``generated``
            (``count, best, mean, median, min, std``) and optional ``baselines`` and ``novelty``.
        training_args: training settings (argparse namespace, dataclass or mapping); keys naming tokens, secrets or
            passwords are left out.
        target_architecture: string or ``nn.Module`` describing the network whose parameters are generated.
        revision: branch to push to (created from ``main`` if missing).
        remote_code: also upload self-contained code files so that stock
            ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works.
    """
    repo_id = _check_repo_id(repo_id)
    api = _api(token, endpoint)
    errors = dict(repo_id=repo_id, endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="pdiff_hub_") as tmp:
        save_for_hub(
            pipe,
            tmp,
            repo_id=repo_id,
            remote_code=remote_code,
            checkpoint_dataset_id=checkpoint_dataset_id,
            checkpoint_dataset_config=checkpoint_dataset_config,
            results=results,
            training_args=training_args,
            target_architecture=target_architecture,
            license=license,
            token=token,
            template_path=card_template,
            endpoint=api.endpoint,
        )
        with _hub_errors(f"create the model repo {repo_id}", **errors):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision and revision != "main" and not revision.startswith("refs/"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        with _hub_errors(f"upload the pipeline to {repo_id}", revision=revision, **errors):
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message,
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
                delete_patterns=PIPELINE_DELETE_PATTERNS,
            )
    logger.info("pushed the p-diff pipeline to %s", info.commit_url)
    return info


# ----------------------------------------------------------------------------------------------------- loading
def _is_remote_code_index(index: Mapping) -> bool:
    return isinstance(index.get("_class_name"), (list, tuple))


def _missing_component_files(folder: Path, name: str) -> List[str]:
    sub = folder / name
    if name == "scheduler":
        return [] if (sub / "scheduler_config.json").is_file() else [f"{name}/scheduler_config.json"]
    missing = [] if (sub / "config.json").is_file() else [f"{name}/config.json"]
    if not sub.is_dir() or not any(p.name.endswith(".safetensors") for p in sub.iterdir()):
        pickles = sorted(p.name for p in sub.iterdir() if p.name.endswith(_PICKLE_SUFFIXES)) if sub.is_dir() else []
        if pickles:
            missing.append(f"{name}/*.safetensors (found only pickle weights {pickles}, which pdiff_hf never loads)")
        else:
            missing.append(f"{name}/diffusion_pytorch_model.safetensors")
    return missing


def _load_components(folder: Path, label: str, pipeline_class, torch_dtype=None, variant=None, overrides=None):
    import diffusers
    from diffusers import SchedulerMixin

    from .models import LatentUNet1DModel, ParameterAutoencoder

    overrides = dict(overrides or {})
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise HubError(f"{label} lacks model_index.json: it is not a saved diffusers pipeline")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise HubError(f"{label} has an unreadable model_index.json ({err})") from None
    components: Dict[str, Any] = {}
    for name, expected in COMPONENTS.items():
        if name in overrides:
            components[name] = overrides.pop(name)
            continue
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            raise HubError(f"{label} lacks the {name} component (no {name!r} entry in model_index.json)")
        missing = _missing_component_files(folder, name)
        if missing:
            raise HubError(f"{label} lacks the {name} component: missing {', '.join(missing)}")
        class_name = entry[1]
        if expected is not None:
            if class_name != expected:
                raise HubError(f"{label}: component {name} is a {class_name}, expected {expected}")
            model_cls = ParameterAutoencoder if name == "autoencoder" else LatentUNet1DModel
            kwargs = {"use_safetensors": True, "variant": variant}
            if torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            try:
                components[name] = model_cls.from_pretrained(str(folder), subfolder=name, **kwargs)
            except PDiffError as err:
                raise type(err)(f"{label}, component {name}: {err}") from None
            except (OSError, ValueError) as err:
                raise HubError(f"{label}: could not load the {name} component ({_describe(err)})") from None
        else:
            scheduler_cls = getattr(diffusers, class_name, None)
            if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
                raise HubError(f"{label}: scheduler class {entry[0]}.{class_name} is not a diffusers scheduler")
            components[name] = scheduler_cls.from_pretrained(str(folder), subfolder=name)
    if overrides:
        raise TypeError(f"unexpected keyword arguments for loading a PDiffPipeline: {sorted(overrides)}")
    return pipeline_class(**components)


def check_target(layout: Optional[ParamLayout], target_module: nn.Module, label: str) -> None:
    """Raise :class:`LayoutMismatchError` naming ``label`` unless ``layout`` fits ``target_module``."""
    if layout is None:
        raise LayoutMismatchError(f"{label} records no parameter layout, so it cannot be checked against {type(target_module).__name__}")
    try:
        layout.check_module(target_module)
    except LayoutMismatchError as err:
        raise LayoutMismatchError(f"the parameter layout of {label} does not match the requested target module: {err}") from None


def load_pipeline(
    pretrained_model_name_or_path: Union[str, os.PathLike],
    pipeline_class=None,
    *,
    revision: Optional[str] = None,
    cache_dir: Union[None, str, os.PathLike] = None,
    token: Optional[str] = None,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: Optional[str] = None,
    target_module: Optional[nn.Module] = None,
    torch_dtype=None,
    **kwargs,
):
    """Load a :class:`~pdiff_hf.PDiffPipeline` from a Hub repo id or a local folder (``PDiffPipeline.from_pretrained``).

    Hub repos are downloaded with ``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir``, ``token``,
    ``local_files_only``, ``force_download``, ``endpoint``), fetching only JSON and safetensors files: code files in
    the repo are never downloaded or run, and pickled weights are never loaded. The components are built with
    pdiff_hf's own classes. Local folders saved by ``save_pretrained`` load through diffusers as before.

    Args:
        target_module: the network the parameters are for; raises :class:`LayoutMismatchError` naming the repo if
            the pipeline's parameter layout does not fit it.
        kwargs: component overrides (``autoencoder=``, ``denoiser=``, ``scheduler=``), ``variant``; for local
            folders in the plain diffusers format, anything ``DiffusionPipeline.from_pretrained`` accepts.
    """
    from diffusers import DiffusionPipeline

    from .pipelines import PDiffPipeline

    pipeline_class = pipeline_class or PDiffPipeline
    name = os.fspath(pretrained_model_name_or_path)
    if kwargs.get("use_safetensors") is False:
        raise HubError("use_safetensors=False is not supported: pdiff_hf only loads safetensors weights")
    kwargs.pop("use_safetensors", None)
    variant = kwargs.pop("variant", None)
    if os.path.isdir(name):
        folder, label = Path(name), f"pipeline folder {name}"
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
        if index and not _is_remote_code_index(index) and target_module is None:
            if torch_dtype is not None:
                kwargs["torch_dtype"] = torch_dtype
            return DiffusionPipeline.from_pretrained.__func__(pipeline_class, name, variant=variant, **kwargs)
    else:
        if os.path.exists(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1:
            raise HubError(f"expected a pipeline folder or a Hub repo id 'owner/name', found no folder {name!r}")
        repo_id = _check_repo_id(name, "a pipeline folder or a Hub repo id")
        label = f"model repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        with _hub_errors(
            f"download the pipeline {repo_id}",
            repo_id,
            "model",
            revision=revision,
            endpoint=endpoint,
            token=token,
            local_files_only=local_files_only,
        ):
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    allow_patterns=PIPELINE_ALLOW_PATTERNS,
                    endpoint=endpoint,
                    library_name="pdiff-hf",
                    library_version=__version__,
                )
            )
    pipe = _load_components(folder, label, pipeline_class, torch_dtype=torch_dtype, variant=variant, overrides=kwargs)
    pipe.register_to_config(_name_or_path=name)
    if target_module is not None:
        check_target(pipe.layout, target_module, label)
    return pipe


# --------------------------------------------------------------------------------------------- checkpoint data
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "params"


def default_config_name(layout: ParamLayout, architecture: Any = None) -> str:
    """Dataset config name of a selection: ``<architecture>-d<D>-<hash of the layout>``, so every architecture /
    parameter selection gets its own config and the same selection always maps to the same one."""
    digest = hashlib.sha1(json.dumps(layout.to_list(), sort_keys=True).encode()).hexdigest()[:8]
    if isinstance(architecture, str):
        arch = architecture.split("(", 1)[0]  # "MNIST1DCNN(channels=32, …)" -> "MNIST1DCNN"
    else:
        arch = type(architecture).__name__ if architecture is not None else "params"
    return f"{_slug(arch)}-d{layout.dim}-{digest}"


def _check_config_name(config_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}", config_name or "") or config_name == "data":
        raise CheckpointDatasetError(
            f"expected a dataset config name of letters, digits, '-', '_' or '.' (not 'data'), found {config_name!r}"
        )
    return config_name


def _layout_document(dataset: datasets.Dataset, layout: ParamLayout, config_name: str, architecture: Optional[str]) -> Dict:
    return {
        "config_name": config_name,
        "architecture": architecture,
        "dim": layout.dim,
        "num_tensors": len(layout.specs),
        "num_checkpoints": len(dataset),
        "columns": [c for c in dataset.column_names],
        "param_layout": layout.to_list(),
        "pdiff_hf_version": __version__,
    }


def push_checkpoint_dataset(
    dataset: Union[datasets.Dataset, datasets.DatasetDict],
    repo_id: str,
    config_name: Optional[str] = None,
    *,
    token: Optional[str] = None,
    private: bool = False,
    split: Optional[str] = None,
    architecture: Any = None,
    max_shard_size: Union[None, int, str] = None,
    num_shards: Optional[int] = None,
    commit_message: Optional[str] = None,
    revision: Optional[str] = None,
    license: str = DEFAULT_LICENSE,
    description: Optional[str] = None,
    card_template: Union[None, str, os.PathLike] = None,
):
    """Push a checkpoint dataset (or a ``DatasetDict`` of splits) to the dataset repo ``repo_id`` as parquet shards
    under config ``config_name`` (default :func:`default_config_name`), with the parameter layout in
    ``param_layouts/<config>.json`` and a dataset card from ``hub_cards/dataset_card.md``. Returns the
    ``CommitInfo`` of the card commit; ``.config_name`` is set on it.

    The Hub endpoint is ``HF_ENDPOINT`` (the ``datasets`` library reads it at import).
    """
    repo_id = _check_repo_id(repo_id, "a dataset repo id")
    splits = dict(dataset) if isinstance(dataset, datasets.DatasetDict) else {split or (str(dataset.split) if dataset.split else "train"): dataset}
    layout = None
    for split_name, part in splits.items():
        part_layout = get_layout(part)
        params = checkpoint_params(part)  # checks the column, D and finiteness before anything is uploaded
        if params.shape[1] != part_layout.dim:
            raise DimensionMismatchError(
                f"split {split_name}: the params column has D={params.shape[1]}, its layout [{part_layout.describe()}] has D={part_layout.dim}"
            )
        if layout is not None and part_layout != layout:
            raise CheckpointDatasetError(f"split {split_name} has another parameter layout than the other splits")
        layout = part_layout
    if isinstance(max_shard_size, str) and max_shard_size.strip().isdigit():
        max_shard_size = int(max_shard_size)
    if max_shard_size is not None:
        from datasets.utils.py_utils import convert_file_size_to_int

        try:
            convert_file_size_to_int(max_shard_size)
        except (ValueError, TypeError):
            raise CheckpointDatasetError(
                f"expected max_shard_size as bytes or a size such as '500MB', found {max_shard_size!r}"
            ) from None
    arch = describe_architecture(architecture)
    config_name = _check_config_name(config_name or default_config_name(layout, architecture))
    errors = dict(repo_id=repo_id, repo_type="dataset", revision=revision, token=token)
    for split_name, part in splits.items():
        with _hub_errors(f"push the checkpoint dataset to {repo_id}", **errors):
            part.push_to_hub(
                repo_id,
                config_name=config_name,
                split=split_name,
                token=token,
                private=private,
                max_shard_size=max_shard_size,
                num_shards=num_shards,
                revision=revision,
                commit_message=commit_message or f"Upload p-diff checkpoints ({config_name}, {split_name})",
            )
    total = sum(len(p) for p in splits.values())
    document = _layout_document(next(iter(splits.values())), layout, config_name, arch)
    document["num_checkpoints"] = total
    document["splits"] = {k: len(v) for k, v in splits.items()}
    api = _api(token)
    with _hub_errors(f"write the dataset card of {repo_id}", **errors):
        readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
        existing = DatasetCard.load(readme)
        configs = {config_name: document}
        for path in api.list_repo_files(repo_id, repo_type="dataset", revision=revision):
            other = path[len(LAYOUT_DIR) + 1 : -5] if path.startswith(LAYOUT_DIR + "/") and path.endswith(".json") else None
            if other and other != config_name:
                local = hf_hub_download(repo_id, path, repo_type="dataset", revision=revision, token=token)
                configs[other] = json.loads(Path(local).read_text(encoding="utf-8"))
        data = existing.data.to_dict()
        data["license"] = data.get("license") or license
        data["tags"] = sorted(set(data.get("tags") or []) | set(DATASET_TAGS))
        data.setdefault("pretty_name", f"p-diff checkpoints: {repo_id.split('/')[-1]}")
        card_configs = []
        for name in sorted(configs):
            doc = configs[name]
            doc_layout = ParamLayout.from_list(doc["param_layout"])
            card_configs.append({"name": name, "doc": doc, **_layout_context(doc_layout)})
        template = Path(card_template).read_text(encoding="utf-8") if card_template else _template("dataset_card.md")
        card = DatasetCard.from_template(
            DatasetCardData(**data),
            template_str=template,
            repo_id=repo_id,
            configs_summary=card_configs,
            description=description,
            layout_dir=LAYOUT_DIR,
            params_column=PARAMS_COLUMN,
            pdiff_hf_version=__version__,
        )
        text = redact(str(card), token)
        info = api.create_commit(
            repo_id,
            repo_type="dataset",
            revision=revision,
            operations=[
                CommitOperationAdd(f"{LAYOUT_DIR}/{config_name}.json", (json.dumps(document, indent=2) + "\n").encode()),
                CommitOperationAdd("README.md", text.encode("utf-8")),
            ],
            commit_message=f"Add p-diff parameter layout and dataset card ({config_name})",
        )
    info.config_name = config_name
    logger.info("pushed checkpoint config %s to %s", config_name, info.commit_url)
    return info


def _params_dim(dataset: datasets.Dataset) -> Optional[int]:
    import pyarrow as pa

    if PARAMS_COLUMN not in dataset.column_names:
        return None
    field_type = dataset.data.schema.field(PARAMS_COLUMN).type
    if pa.types.is_fixed_size_list(field_type):
        return field_type.list_size
    return len(dataset[0][PARAMS_COLUMN]) if len(dataset) else None


def load_checkpoint_dataset(
    repo_id: str,
    config_name: Optional[str] = None,
    *,
    split: Optional[str] = "train",
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Union[None, str, os.PathLike] = None,
    target_module: Optional[nn.Module] = None,
    **load_dataset_kwargs,
) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load config ``config_name`` of a checkpoint dataset repo with ``datasets.load_dataset`` and attach its
    parameter layout (from ``param_layouts/<config>.json``), so :func:`~pdiff_hf.get_layout` and
    :func:`~pdiff_hf.checkpoint_params` work as on the pushed dataset. ``config_name`` may be left out when the
    repo has one config. ``split=None`` returns a ``DatasetDict``."""
    repo_id = _check_repo_id(repo_id, "a dataset repo id")
    errors = dict(repo_id=repo_id, repo_type="dataset", revision=revision, token=token)
    label = f"dataset repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    with _hub_errors(f"load the checkpoint dataset {repo_id}", **errors):
        files = _api(token).list_repo_files(repo_id, repo_type="dataset", revision=revision)
    unsafe = [f for f in files if not f.endswith(_SAFE_DATASET_SUFFIXES) and f.rsplit("/", 1)[-1] not in _SAFE_DATASET_NAMES]
    if unsafe:
        raise HubError(
            f"{label} holds files that pdiff_hf does not load ({', '.join(unsafe[:5])}{', …' if len(unsafe) > 5 else ''}): "
            "checkpoint datasets are read from parquet only, so that nothing downloaded is unpickled or executed"
        )
    available = sorted(p[len(LAYOUT_DIR) + 1 : -5] for p in files if p.startswith(LAYOUT_DIR + "/") and p.endswith(".json"))
    if config_name is None:
        if len(available) != 1:
            raise HubError(
                f"{label} has {len(available)} p-diff configs {available}; pass config_name=" if available
                else f"{label} has no parameter layout ({LAYOUT_DIR}/<config>.json): it was not pushed by pdiff_hf.hub.push_checkpoint_dataset"
            )
        config_name = available[0]
    if config_name not in available:
        raise HubError(
            f"{label} has no parameter layout for config {config_name!r} ({LAYOUT_DIR}/{config_name}.json); "
            f"configs with a layout: {available}"
        )
    with _hub_errors(f"load config {config_name!r} of the checkpoint dataset {repo_id}", **errors):
        layout_file = hf_hub_download(
            repo_id, f"{LAYOUT_DIR}/{config_name}.json", repo_type="dataset", revision=revision, token=token, cache_dir=cache_dir
        )
        loaded = datasets.load_dataset(
            repo_id, config_name, split=split, revision=revision, token=token, cache_dir=cache_dir, **load_dataset_kwargs
        )
    try:
        layout = ParamLayout.from_list(json.loads(Path(layout_file).read_text(encoding="utf-8"))["param_layout"])
    except (ValueError, KeyError, TypeError) as err:
        raise HubError(f"{label}: {LAYOUT_DIR}/{config_name}.json is not a parameter layout ({err})") from None
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for part in parts:
        dim = _params_dim(part)
        if dim is None:
            raise CheckpointDatasetError(f"{label}, config {config_name!r}: expected a {PARAMS_COLUMN!r} column, found {part.column_names}")
        if dim != layout.dim:
            raise DimensionMismatchError(
                f"{label}, config {config_name!r}: params have D={dim}, the recorded layout has D={layout.dim}"
            )
        set_layout(part, layout)
    if target_module is not None:
        check_target(layout, target_module, f"{label}, config {config_name!r}")
    return loaded


__all__ = [
    "build_model_card",
    "default_config_name",
    "describe_architecture",
    "load_checkpoint_dataset",
    "load_pipeline",
    "load_results",
    "push_checkpoint_dataset",
    "push_pipeline",
    "redact",
    "sanitize_training_args",
    "save_for_hub",
]
