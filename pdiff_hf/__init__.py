"""pdiff-hf: Hugging Face–native p-diff (Neural Network Diffusion, Wang et al. 2024, arXiv 2402.13144)."""

__version__ = "0.1.0"

from .checkpoints import (
    check_dataset_layout,
    checkpoint_params,
    get_layout,
    make_checkpoint_dataset,
    set_layout,
    split_by_runs,
)
from .collect import collect_checkpoints, collect_from_runs, train_classifier
from .data import ClassificationSplits
from .errors import (
    CheckpointDatasetError,
    DimensionMismatchError,
    HubError,
    LayoutMismatchError,
    NonFiniteParametersError,
    PDiffError,
    SchedulerError,
    SelectionError,
)
from .evaluation import evaluate_parameters, predict_with_parameters, select_best, summarize_accuracies
from .layout import ParamLayout, ParamSpec
from .models import LatentUNet1DModel, ParameterAutoencoder
from .pipelines import PDiffPipeline, PDiffPipelineOutput
from .fit import fit_pdiff, train_autoencoder, train_denoiser
from .training_utils import PDiffConfig, build_models
from .novelty import NoveltyReport, analyze_novelty, novelty_verdict
