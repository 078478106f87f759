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
    "alignment": [
        "PermutationSpec",
        "align_to",
        "apply_permutation",
        "permutation_spec",
        "spec_from_module",
        "weight_matching",
    ],
    "checkpoints.collect": ["collect_checkpoints", "train_classifier"],
    "checkpoints.collect_runs": ["collect_branches", "collect_from_runs"],
    "checkpoints.conditional": ["collect_conditional_checkpoints"],
    "checkpoints.dataset": [
        "check_dataset_layout",
        "checkpoint_conditions",
        "checkpoint_params",
        "get_condition_names",
        "get_layout",
        "make_checkpoint_dataset",
        "set_condition_names",
        "set_layout",
        "split_by_runs",
    ],
    "checkpoints.import_checkpoints": [
        "checkpoints_from_files",
        "checkpoints_from_hub",
        "checkpoints_from_state_dicts",
    ],
    "checkpoints.run_mixing": ["MixedRunsWarning", "check_weight_averaging"],
    "checkpoints.trainer_callback": ["PDiffCheckpointCallback"],
    "errors": [
        "AlignmentError",
        "CheckpointDatasetError",
        "CheckpointFileError",
        "CollectionError",
        "ConditionError",
        "DimensionMismatchError",
        "GeneralizationTestError",
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
        "TargetMismatchError",
        "TrainingScriptError",
        "UnknownTaskError",
    ],
    "evaluation.batched": ["evaluate_parameters", "predict_with_parameters", "select_best", "summarize_accuracies"],
    "evaluation.conditional": [
        "cross_task_matrix",
        "generate_per_condition",
        "per_condition_summary",
        "task_accuracies",
    ],
    "evaluation.data": ["ClassificationSplits"],
    "evaluation.recalibration": ["recalibrate_batchnorm", "recalibrate_parameters"],
    "hub.datasets": ["load_checkpoint_dataset"],
    "layout": ["ParamLayout", "ParamSpec"],
    "models": ["LatentUNet1DModel", "LinearParameterAutoencoder", "ParameterAutoencoder", "TokenParameterAutoencoder"],
    "novelty": ["NoveltyReport", "analyze_novelty", "novelty_verdict"],
    "pipelines": ["PDiffPipeline", "PDiffPipelineOutput"],
    "pipelines.pipeline_output": ["GeneratedModels"],
    "training.config": ["PDiffConfig"],
    "training.fit": ["fit_pdiff", "train_autoencoder", "train_denoiser"],
    "training.shuffled_control": ["fit_shuffled_control"],
    "training.training_utils": ["build_models"],
}
# concept folders and modules reachable as attributes without an import statement (pdiff_hf.hub.push_pipeline, …)
_submodules = sorted(
    {m.split(".")[0] for m in _import_structure}
    | {"checkpoints", "commands", "demos", "evaluation", "hub", "models", "remote_code", "tasks", "training", "utils"}
)

_name_to_module = {name: module for module, names in _import_structure.items() for name in names}
__all__ = ["__version__"] + sorted(_name_to_module)

if TYPE_CHECKING:
    from .alignment import (
        PermutationSpec,
        align_to,
        apply_permutation,
        permutation_spec,
        spec_from_module,
        weight_matching,
    )
    from .checkpoints.collect import collect_checkpoints, train_classifier
    from .checkpoints.collect_runs import collect_branches, collect_from_runs
    from .checkpoints.conditional import collect_conditional_checkpoints
    from .checkpoints.dataset import (
        check_dataset_layout,
        checkpoint_conditions,
        checkpoint_params,
        get_condition_names,
        get_layout,
        make_checkpoint_dataset,
        set_condition_names,
        set_layout,
        split_by_runs,
    )
    from .checkpoints.import_checkpoints import (
        checkpoints_from_files,
        checkpoints_from_hub,
        checkpoints_from_state_dicts,
    )
    from .checkpoints.run_mixing import MixedRunsWarning, check_weight_averaging
    from .checkpoints.trainer_callback import PDiffCheckpointCallback
    from .errors import (
        AlignmentError,
        CheckpointDatasetError,
        CheckpointFileError,
        CollectionError,
        ConditionError,
        DimensionMismatchError,
        GeneralizationTestError,
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
        TargetMismatchError,
        TrainingScriptError,
        UnknownTaskError,
    )
    from .evaluation.batched import evaluate_parameters, predict_with_parameters, select_best, summarize_accuracies
    from .evaluation.conditional import (
        cross_task_matrix,
        generate_per_condition,
        per_condition_summary,
        task_accuracies,
    )
    from .evaluation.data import ClassificationSplits
    from .evaluation.recalibration import recalibrate_batchnorm, recalibrate_parameters
    from .hub.datasets import load_checkpoint_dataset
    from .layout import ParamLayout, ParamSpec
    from .models import LatentUNet1DModel, LinearParameterAutoencoder, ParameterAutoencoder, TokenParameterAutoencoder
    from .novelty import NoveltyReport, analyze_novelty, novelty_verdict
    from .pipelines import PDiffPipeline, PDiffPipelineOutput
    from .pipelines.pipeline_output import GeneratedModels
    from .training.config import PDiffConfig
    from .training.fit import fit_pdiff, train_autoencoder, train_denoiser
    from .training.shuffled_control import fit_shuffled_control
    from .training.training_utils import build_models


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
