"""pdiff-hf: Hugging Face–native p-diff (Neural Network Diffusion, Wang et al. 2024, arXiv 2402.13144).

``import pdiff_hf`` is cheap: like ``diffusers`` and ``transformers``, the package only records where each public name
lives (``_import_structure``) and imports that submodule — with torch, diffusers, datasets — on first use of the
name (``pdiff_hf.PDiffPipeline``, ``from pdiff_hf import fit_pdiff``). Type checkers see ordinary imports.
"""

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# submodule -> the public names it exports (at top level)
_import_structure: Dict[str, List[str]] = {
    "checkpoint_import": ["checkpoints_from_files", "checkpoints_from_hub", "checkpoints_from_state_dicts"],
    "checkpoints": [
        "check_dataset_layout",
        "checkpoint_conditions",
        "checkpoint_params",
        "get_condition_names",
        "get_layout",
        "load_checkpoint_dataset",
        "make_checkpoint_dataset",
        "set_condition_names",
        "set_layout",
        "split_by_runs",
    ],
    "conditional": [
        "collect_conditional_checkpoints",
        "cross_task_matrix",
        "fit_shuffled_control",
        "generate_per_condition",
        "per_condition_summary",
        "task_accuracies",
    ],
    "collect": ["collect_branches", "collect_checkpoints", "collect_from_runs", "train_classifier"],
    "data": ["ClassificationSplits"],
    "errors": [
        "CheckpointDatasetError",
        "CheckpointFileError",
        "ConditionError",
        "DimensionMismatchError",
        "HubError",
        "LayoutMismatchError",
        "MissingLabelsError",
        "ModelOutputError",
        "NonFiniteParametersError",
        "OutputFolderError",
        "OutputFolderInUseError",
        "PDiffConfigError",
        "PDiffError",
        "PeftLayoutError",
        "PipelineInputError",
        "RecalibrationError",
        "SchedulerError",
        "SelectionError",
        "TrainingScriptError",
        "UnknownTaskError",
    ],
    "evaluation": ["evaluate_parameters", "predict_with_parameters", "select_best", "summarize_accuracies"],
    "fit": ["fit_pdiff", "train_autoencoder", "train_denoiser"],
    "layout": ["ParamLayout", "ParamSpec"],
    "models": ["LatentUNet1DModel", "ParameterAutoencoder", "TokenParameterAutoencoder"],
    "novelty": ["NoveltyReport", "analyze_novelty", "novelty_verdict"],
    "pipelines": ["PDiffPipeline", "PDiffPipelineOutput"],
    "pipelines.pipeline_output": ["GeneratedModels"],
    "recalibration": ["recalibrate_batchnorm", "recalibrate_parameters"],
    "trainer_callback": ["PDiffCheckpointCallback"],
    "training_utils": ["PDiffConfig", "build_models"],
    "weight_averaging": ["MixedRunsWarning", "check_weight_averaging"],
}
# submodules reachable as attributes without an import statement (pdiff_hf.hub.push_pipeline, pdiff_hf.tasks, …)
_submodules = sorted(
    {m for m in _import_structure if "." not in m} | {"checkpointing", "commands", "demo", "hub", "io_utils", "normalization", "remote_code", "scoring", "tasks"}
)

_name_to_module = {name: module for module, names in _import_structure.items() for name in names}
__all__ = ["__version__"] + sorted(_name_to_module)

if TYPE_CHECKING:
    from .checkpoint_import import checkpoints_from_files, checkpoints_from_hub, checkpoints_from_state_dicts
    from .checkpoints import (
        check_dataset_layout,
        checkpoint_conditions,
        checkpoint_params,
        get_condition_names,
        get_layout,
        load_checkpoint_dataset,
        make_checkpoint_dataset,
        set_condition_names,
        set_layout,
        split_by_runs,
    )
    from .conditional import (
        collect_conditional_checkpoints,
        cross_task_matrix,
        fit_shuffled_control,
        generate_per_condition,
        per_condition_summary,
        task_accuracies,
    )
    from .collect import collect_branches, collect_checkpoints, collect_from_runs, train_classifier
    from .data import ClassificationSplits
    from .errors import (
        CheckpointDatasetError,
        CheckpointFileError,
        ConditionError,
        DimensionMismatchError,
        HubError,
        LayoutMismatchError,
        MissingLabelsError,
        ModelOutputError,
        NonFiniteParametersError,
        OutputFolderError,
        OutputFolderInUseError,
        PDiffConfigError,
        PDiffError,
        PeftLayoutError,
        PipelineInputError,
        RecalibrationError,
        SchedulerError,
        SelectionError,
        TrainingScriptError,
        UnknownTaskError,
    )
    from .evaluation import evaluate_parameters, predict_with_parameters, select_best, summarize_accuracies
    from .fit import fit_pdiff, train_autoencoder, train_denoiser
    from .layout import ParamLayout, ParamSpec
    from .models import LatentUNet1DModel, ParameterAutoencoder, TokenParameterAutoencoder
    from .novelty import NoveltyReport, analyze_novelty, novelty_verdict
    from .pipelines import PDiffPipeline, PDiffPipelineOutput
    from .pipelines.pipeline_output import GeneratedModels
    from .recalibration import recalibrate_batchnorm, recalibrate_parameters
    from .trainer_callback import PDiffCheckpointCallback
    from .training_utils import PDiffConfig, build_models
    from .weight_averaging import MixedRunsWarning, check_weight_averaging


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access and cache the value in this module."""
    module = _name_to_module.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _submodules:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__) | set(_submodules))
