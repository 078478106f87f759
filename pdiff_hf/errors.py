"""Every named exception raised by pdiff_hf, in one place.

Each error says what was expected and what was found, so a user can fix the input without reading our code.
All of them derive from :class:`PDiffError`, which itself is a ``ValueError`` so generic handlers keep working.
Errors from ``huggingface_hub`` (``RepositoryNotFoundError``, ``RevisionNotFoundError``, …) are not wrapped: they
already say what happened.
"""


class PDiffError(ValueError):
    """Base class of every error raised on bad input by pdiff_hf."""


# ------------------------------------------------------------------------------------------ parameters and data
class SelectionError(PDiffError):
    """A parameter selection matched nothing, or matched something it cannot flatten."""


class LayoutMismatchError(PDiffError):
    """A parameter vector, state dict or module does not match a recorded parameter layout."""


class PeftLayoutError(LayoutMismatchError):
    """A PEFT adapter layout does not fit its base model (a module the adapter attaches to is missing, or has other
    features), or a base model, adapter config or adapter folder is not what PEFT adapters need."""


class TargetMismatchError(LayoutMismatchError):
    """A target network's tensors outside the generated selection differ from those of the network the pipeline was
    trained for (its recorded fingerprint), or saved target weights do not fit the network given to load them into."""


class DimensionMismatchError(PDiffError):
    """A tensor or dataset has a parameter dimension ``D`` other than the one a model was built for."""


class NonFiniteParametersError(PDiffError):
    """Checkpoints or generated parameters contain NaN or Inf values."""


class CheckpointDatasetError(PDiffError):
    """A checkpoint dataset lacks the expected columns, layout metadata or rows."""


class UnknownTaskError(PDiffError):
    """A task name that is not in the registry ``pdiff_hf.tasks.TASKS``."""


class MissingLabelsError(PDiffError):
    """A batch used for scoring or training carries no labels (no ``labels`` entry, no second element)."""


class ModelOutputError(PDiffError):
    """A model output holds no logits (not a tensor, no ``logits`` entry, no tensor first element) and no
    ``score_fn`` was given to score it."""


class CheckpointFileError(PDiffError):
    """A checkpoint file or state dict cannot be read safely or does not fit the parameter layout."""


class RecalibrationError(PDiffError):
    """BatchNorm recalibration was asked of a model without BatchNorm running statistics, or given no batches."""


class GeneralizationTestError(PDiffError):
    """A held-out generalization test without enough checkpoints (fewer than 10 training or 5 held-out), or with
    groups, predictions or settings that do not fit together (:mod:`pdiff_hf.novelty.generalization`)."""


class AlignmentError(PDiffError):
    """Permutation alignment cannot be done safely: an architecture without a permutation spec (residual adds,
    concatenation, attention, grouped convolutions, unknown modules with parameters), a spec whose tied axes disagree
    in size, a state dict or permutation that does not fit the spec, or runs of different architectures."""


class CollectionError(PDiffError):
    """Checkpoint collection settings or data that cannot train: a learning rate, momentum or batch size out of
    range, an empty split, labels that are not integer class ids, inputs the network does not take (all checked
    before training), or training that diverged (stopped at the first non-finite step, naming it)."""


# ------------------------------------------------------------------------------------------- models, pipeline
class SchedulerError(PDiffError):
    """A scheduler is unknown or incompatible with the objective the denoiser was trained with."""


class PipelineInputError(PDiffError):
    """An argument of ``PDiffPipeline.__call__`` is out of range or of the wrong type."""


class ConditionError(PipelineInputError):
    """A condition (class/task id) outside ``num_conditions``, a condition or ``guidance_scale != 1`` for an
    unconditional model, or a condition column that a dataset lacks."""


# ---------------------------------------------------------------------------------------------- training
class TrainingScriptError(PDiffError):
    """Bad command-line input for a training script (missing path, contradicting or out-of-range flags, …)."""


class PDiffConfigError(PDiffError):
    """A :class:`~pdiff_hf.PDiffConfig` given to ``fit_pdiff`` has a step count, batch size or learning rate out of
    range."""


# ---------------------------------------------------------------------------------------------- output folders
class OutputFolderError(PDiffError):
    """An output folder cannot be created or written (checked with a probe file before any work starts)."""


class OutputFolderInUseError(OutputFolderError):
    """Another running job holds the lock of the output folder (its ``.lock`` file)."""


# ------------------------------------------------------------------------------------------------- Hub
class HubError(PDiffError):
    """A Hub operation was refused by pdiff_hf's own checks: a malformed repo id, a repo holding files that are
    never loaded (pickles, code), a missing pipeline component. Messages name the repo and never contain the
    access token. Transport and not-found errors of ``huggingface_hub`` propagate unchanged."""


class RemoteCodeError(PDiffError):
    """The self-contained code uploaded for ``trust_remote_code=True`` loading could not be generated."""


# ------------------------------------------------------------------------------------------- command line
class CLIError(PDiffError):
    """Bad command-line input to ``pdiff-hf`` (missing path, contradicting flags, …)."""


class DemoConfigError(CLIError):
    """Demo options that are out of range or contradict each other."""


class EvaluateError(CLIError):
    """``pdiff-hf evaluate`` inputs that do not fit together."""


class PushError(CLIError):
    """``pdiff-hf push`` was given a folder it cannot upload."""


# ------------------------------------------------------------------------------------------- helpers
def first_line(err: BaseException, default: str = "") -> str:
    """The first line of ``str(err)`` without surrounding blanks, for quoting a library's error inside one of ours;
    ``default`` when the message is empty (e.g. ``type(err).__name__``)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else default
