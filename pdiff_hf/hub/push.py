"""Write a pipeline as a self-contained folder and upload it to the Hub.

:func:`save_for_hub` writes the folder that every save and push produces (``PDiffPipeline.save_pretrained(dir)``,
``save_pretrained(dir, push_to_hub=True)``, ``push_to_hub`` and :func:`push_pipeline` all go through it)::

    model_index.json                      pipeline and component classes; with remote code, [module, class] pairs
    autoencoder/  config.json  diffusion_pytorch_model.safetensors  [pdiff_autoencoder.py]
    denoiser/     config.json  diffusion_pytorch_model.safetensors  [pdiff_denoiser.py]
    scheduler/    scheduler_config.json
    [target/]     config.json  *.safetensors  [pdiff_target.py]  the target network, if the pipeline has one
                  (a Hub mixin: config.json model.safetensors; a plain module: model.safetensors)
    [target_fingerprint.json]             the target's class and the sha256 of each tensor outside the selection
    param_layout.json                     the tensors of the generated vector (D values)
    README.md                             the model card (hub_cards/model_card.md)
    [results.json]                        the evaluation and novelty statistics, when results are given
    [pipeline_pdiff.py]                   with remote code: the pipeline, bundled from pdiff_hf's own source

so that both ``PDiffPipeline.from_pretrained(path_or_repo)`` and, without pdiff_hf installed, stock
``DiffusionPipeline.from_pretrained(path_or_repo, trust_remote_code=True)`` load it. :func:`upload_pipeline_folder`
uploads such a folder; diffusers' own upload path (which writes no card and no code) is never used. A push that
names its checkpoint dataset also adds the model to that dataset's card (:func:`link_dataset_card`).
"""

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo

from ..errors import HubError
from .cards import (
    DEFAULT_LICENSE,
    build_dataset_card,
    build_model_card,
    results_document,
)
from .repo import LAYOUT_FILE, check_repo_id, hub_api
from .target import (
    FINGERPRINT_FILE,
    LIBRARY_KINDS,
    TARGET,
    check_savable_target,
    copy_unbuilt_target,
    save_target_files,
    target_kind,
    target_record,
)

logger = logging.getLogger(__name__)

# Files of an earlier push that a new push replaces (deleted when the new upload does not bring them again).
PIPELINE_DELETE_PATTERNS = [
    "*.py", "autoencoder/*", "denoiser/*", "scheduler/*", "target/*", "results.json", "target_fingerprint.json",
]  # fmt: skip
# What the card of a folder saved without a repo id loads from (its snippets need a name; the folder may be renamed
# or moved after saving, as the training scripts do, so its own path would be wrong).
LOCAL_FOLDER_NAME = "path/to/this/folder"


def save_for_hub(
    pipe,
    save_directory: str | os.PathLike,
    *,
    repo_id: str | None = None,
    remote_code: bool = True,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    card_template: str | os.PathLike | None = None,
    **card_kwargs,
) -> Path:
    """Write ``pipe`` into ``save_directory`` as described in the module docstring and return the folder.
    Only ``pipe``'s own files are written; files already in the folder stay.

    Args:
        repo_id: the repo the folder is meant for; the card's loading examples use it (without one,
            ``path/to/this/folder``).
        remote_code: also write the self-contained code files and a ``model_index.json`` pointing at them.
        variant / max_shard_size: passed to diffusers' weight saving (safetensors always).
        card_template: a model card template to use instead of ``hub_cards/model_card.md``.
        card_kwargs: :func:`~pdiff_hf.hub.build_model_card` arguments (``results``, ``training_args``,
            ``checkpoint_dataset_id``, ``target_architecture``, ``token`` to redact, …).
    """
    import diffusers
    from diffusers import DiffusionPipeline, SchedulerMixin

    folder = Path(save_directory)
    scheduler_cls = type(pipe.scheduler)
    loads_by_name = getattr(diffusers, scheduler_cls.__name__, None) is scheduler_cls
    if not isinstance(pipe.scheduler, SchedulerMixin) or not loads_by_name:
        raise HubError(
            "expected a diffusers scheduler class that loads by name, found "
            f"{scheduler_cls.__module__}.{scheduler_cls.__name__}"
        )
    target = getattr(pipe, "target", None)
    check_savable_target(target)
    # A Hub-mixin or plain target is written by pdiff_hf, named [null, null] in model_index.json (stock diffusers
    # cannot build it) and described by target_fingerprint.json; diffusers writes the others itself.
    own_format = target is not None and target_kind(target) not in LIBRARY_KINDS
    entry = pipe.config.get(TARGET)
    if own_format:
        pipe.register_to_config(**{TARGET: (None, None)})
    try:
        # The base-class method: PDiffPipeline.save_pretrained itself comes back here.
        DiffusionPipeline.save_pretrained(
            pipe, folder, safe_serialization=True, variant=variant, max_shard_size=max_shard_size
        )
    finally:
        if own_format:
            pipe.register_to_config(**{TARGET: entry})
    if own_format:
        save_target_files(target, folder / TARGET)
    library_target = None if own_format else target
    fingerprint = pipe.target_fingerprint
    if fingerprint is not None:
        if target is not None:
            record = target_record(target, fingerprint)
        else:  # a loaded target left unbuilt (its files are copied), or the record of a removed one
            record = copy_unbuilt_target(pipe, folder) or {
                "class_name": "unknown", "module": "unknown", "kind": "removed", "tensors": fingerprint,
            }  # fmt: skip
        (folder / FINGERPRINT_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    else:
        (folder / FINGERPRINT_FILE).unlink(missing_ok=True)  # from an earlier save into this folder
    index_path = folder / "model_index.json"
    if remote_code:
        from ..remote_code import remote_code_files, remote_model_index

        for rel, source in remote_code_files(library_target).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(source, encoding="utf-8")
        index = remote_model_index(json.loads(index_path.read_text(encoding="utf-8")), library_target)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if pipe.layout is not None:
        document = {"param_layout": pipe.layout.to_list(), "dim": pipe.layout.dim}
        (folder / LAYOUT_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    card = build_model_card(pipe, repo_id or LOCAL_FOLDER_NAME, template_path=card_template, **card_kwargs)
    card.save(folder / "README.md")
    results = results_document(card_kwargs.get("results"), card_kwargs.get("token"))
    if results is not None:  # the raw statistics the card leaves out
        (folder / "results.json").write_text(results, encoding="utf-8")
    return folder


def link_dataset_card(
    dataset_id: str, model_id: str, *, token: str | None = None, endpoint: str | None = None
) -> CommitInfo | None:
    """Add ``model_id`` to the card of the checkpoint dataset ``dataset_id`` (its ``pdiff_models`` metadata and a
    link), rebuilt from the layout files of its configs; returns the commit, or ``None`` when the card already links
    the model. Used by :func:`push_pipeline`, which only logs a warning when this fails (a dataset of someone else,
    a dataset repo not made by pdiff_hf)."""
    from huggingface_hub import CommitOperationAdd, DatasetCard

    from .datasets import _layout_configs
    from .repo import LAYOUT_DIR

    api = hub_api(token, endpoint)
    readme = api.hf_hub_download(dataset_id, "README.md", repo_type="dataset")
    existing = DatasetCard.load(readme).data.to_dict()
    if model_id in (existing.get("pdiff_models") or []):
        return None
    configs = {}
    for name in _layout_configs(api.list_repo_files(dataset_id, repo_type="dataset")):
        path = api.hf_hub_download(dataset_id, f"{LAYOUT_DIR}/{name}.json", repo_type="dataset")
        configs[name] = json.loads(Path(path).read_text(encoding="utf-8"))
    card = build_dataset_card(dataset_id, configs, existing, token=token, model_id=model_id)
    return api.create_commit(
        dataset_id,
        repo_type="dataset",
        operations=[CommitOperationAdd("README.md", str(card).encode("utf-8"))],
        commit_message=f"Link the p-diff model {model_id}",
    )


def upload_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload p-diff pipeline",
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a folder written by :func:`save_for_hub` to the model repo ``repo_id`` in one commit: the repo (and
    the branch ``revision``) is created if needed, and files of an earlier push that this folder no longer has
    (old code files, component files) are deleted in the same commit."""
    repo_id = check_repo_id(repo_id)
    api = hub_api(token, endpoint)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        delete_patterns=PIPELINE_DELETE_PATTERNS,
    )
    logger.info("pushed the p-diff pipeline to %s", info.commit_url)
    return info


def push_pipeline(
    pipe,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    checkpoint_dataset_id: str | None = None,
    results: Any = None,
    training_args: Any = None,
    commit_message: str = "Upload p-diff pipeline",
    *,
    checkpoint_dataset_config: str | None = None,
    target_architecture: Any = None,
    license: str = DEFAULT_LICENSE,
    revision: str | None = None,
    create_pr: bool = False,
    commit_description: str | None = None,
    remote_code: bool = True,
    endpoint: str | None = None,
    card_template: None | str | os.PathLike = None,
    max_shard_size: int | str | None = None,
    save_directory: str | os.PathLike | None = None,
) -> CommitInfo:
    """Upload ``pipe`` to the model repo ``repo_id`` (created if needed) with its model card and return the
    ``huggingface_hub.CommitInfo`` (``.commit_url``, ``.oid``, ``.repo_url``). Errors of the Hub
    (``RepositoryNotFoundError``, ``HfHubHTTPError`` for a refused token, …) propagate unchanged.

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
        max_shard_size: largest safetensors file before the weights are sharded (diffusers' default: 10GB).
        save_directory: keep the uploaded folder there (``save_pretrained(dir, push_to_hub=True)``); default a
            temporary folder.
    """
    repo_id = check_repo_id(repo_id)
    api = hub_api(token, endpoint)
    save_kwargs = dict(
        remote_code=remote_code,
        max_shard_size=max_shard_size,
        checkpoint_dataset_id=checkpoint_dataset_id,
        checkpoint_dataset_config=checkpoint_dataset_config,
        results=results,
        training_args=training_args,
        target_architecture=target_architecture,
        license=license,
        token=token,
        card_template=card_template,
        endpoint=api.endpoint,
    )
    upload = dict(
        token=token,
        private=private,
        commit_message=commit_message,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        endpoint=endpoint,
    )
    if save_directory is not None:
        folder = save_for_hub(pipe, save_directory, repo_id=repo_id, **save_kwargs)
        info = upload_pipeline_folder(folder, repo_id, **upload)
    else:
        with tempfile.TemporaryDirectory(prefix="pdiff_hub_") as tmp:
            save_for_hub(pipe, tmp, repo_id=repo_id, **save_kwargs)
            info = upload_pipeline_folder(tmp, repo_id, **upload)
    if checkpoint_dataset_id and not create_pr:
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        try:
            link_dataset_card(checkpoint_dataset_id, repo_id, token=token, endpoint=endpoint)
        except (EntryNotFoundError, HfHubHTTPError, ValueError, KeyError) as err:
            logger.warning(
                "pushed %s, but could not link it from the card of dataset %s (%s)",
                repo_id, checkpoint_dataset_id, type(err).__name__,
            )  # fmt: skip
    return info


def save_pipeline(
    pipe,
    save_directory: str | os.PathLike | None,
    *,
    safe_serialization: bool = True,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    **kwargs,
) -> CommitInfo | None:
    """``PDiffPipeline.save_pretrained`` and ``push_to_hub``: write the folder of :func:`save_for_hub` into
    ``save_directory``; with ``push_to_hub=True`` also upload it to ``repo_id`` with :func:`push_pipeline` (so both
    methods give the same files and the same card) and return the ``CommitInfo``. ``save_directory=None`` (only with
    ``push_to_hub=True``) writes the folder to a temporary directory.

    ``kwargs`` are :func:`push_pipeline`'s options (``results``, ``training_args``, ``checkpoint_dataset_id``,
    ``target_architecture``, ``remote_code``, ``card_template``, … and, when pushing, ``revision``,
    ``commit_description``, ``endpoint``).
    """
    if not safe_serialization:
        raise HubError(
            "expected safe_serialization=True, found False: pdiff_hf writes and loads safetensors weights only"
        )
    if not push_to_hub:
        if save_directory is None:
            raise HubError("expected a save_directory to write the pipeline to, found None")
        from ..utils.atomic_dir import atomic_folder
        from .save_folder import pipeline_owns

        # all or nothing: written into a hidden sibling that replaces save_directory in one rename (a kill leaves
        # the old pipeline or the new one, never a mix); files in it that are not the pipeline's are kept
        with atomic_folder(save_directory, owns=pipeline_owns(variant)) as tmp:
            save_for_hub(pipe, tmp, repo_id=repo_id, variant=variant, max_shard_size=max_shard_size, token=token, **kwargs)
        return None
    if repo_id is None:
        raise HubError("expected repo_id='owner/name' with push_to_hub=True, found none")
    if variant is not None:
        raise HubError(
            f"expected variant=None with push_to_hub=True, found {variant!r}: a pushed repo holds the weights without "
            "a variant, so that from_pretrained(repo_id) finds them"
        )
    return push_pipeline(
        pipe,
        repo_id,
        token=token,
        private=bool(private),
        commit_message=commit_message or "Upload p-diff pipeline",
        create_pr=create_pr,
        max_shard_size=max_shard_size,
        save_directory=save_directory,
        **kwargs,
    )
