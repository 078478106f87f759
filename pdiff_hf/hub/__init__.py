"""Hugging Face Hub integration: push and load p-diff pipelines and checkpoint datasets.

=================  =========================================================================================
module             what
=================  =========================================================================================
``repo``           repo-id checks, the ``HfApi`` client, the layout check against a target network
``cards``          model and dataset cards from ``hub_cards/*.md``; training settings without credentials
``push``           the self-contained pipeline folder (``save_pretrained``) and its upload (``push_to_hub``)
``load``           safe loading (``from_pretrained``): JSON + safetensors only, built with pdiff_hf's classes
``datasets``       checkpoint datasets as parquet configs with their parameter layouts
=================  =========================================================================================

Pipelines load both ways::

    PDiffPipeline.from_pretrained("owner/name" or folder, revision=..., cache_dir=..., token=..., local_files_only=...)
    DiffusionPipeline.from_pretrained("owner/name" or folder, trust_remote_code=True)   # without pdiff_hf installed

Errors of ``huggingface_hub`` (``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError``,
``LocalEntryNotFoundError``, ``HfHubHTTPError``, transport errors) propagate with their own types.
:class:`~pdiff_hf.errors.HubError` is raised only by pdiff_hf's own checks: a malformed repo id, a repo holding files
pdiff_hf never loads, a missing pipeline component. No message, log or written file contains the access token.
"""

from .cards import (
    DEFAULT_LICENSE,
    build_dataset_card,
    build_model_card,
    collection_recipe,
    describe_architecture,
    load_results,
    results_document,
    target_hub_id,
)
from .datasets import (
    default_config_name,
    load_checkpoint_dataset_from_hub,
    push_checkpoint_dataset,
)
from .load import PIPELINE_ALLOW_PATTERNS, load_components, load_pipeline
from .push import (
    PIPELINE_DELETE_PATTERNS,
    link_dataset_card,
    push_pipeline,
    save_for_hub,
    save_pipeline,
    upload_pipeline_folder,
)
from .repo import LAYOUT_DIR, LAYOUT_FILE, check_repo_id, check_target
from .secrets import redact, sanitize_training_args

__all__ = [
    "DEFAULT_LICENSE",
    "LAYOUT_DIR",
    "LAYOUT_FILE",
    "PIPELINE_ALLOW_PATTERNS",
    "PIPELINE_DELETE_PATTERNS",
    "build_dataset_card",
    "build_model_card",
    "check_repo_id",
    "check_target",
    "collection_recipe",
    "default_config_name",
    "describe_architecture",
    "link_dataset_card",
    "load_checkpoint_dataset_from_hub",
    "load_components",
    "load_pipeline",
    "load_results",
    "push_checkpoint_dataset",
    "push_pipeline",
    "redact",
    "results_document",
    "sanitize_training_args",
    "save_for_hub",
    "save_pipeline",
    "target_hub_id",
    "upload_pipeline_folder",
]
