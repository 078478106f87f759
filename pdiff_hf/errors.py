"""Named exceptions raised by pdiff_hf.

Every error says what was expected and what was found, so a user can fix the input without reading our code.
All of them derive from :class:`PDiffError`, which itself is a ``ValueError`` so generic handlers keep working.
"""


class PDiffError(ValueError):
    """Base class of every error raised on bad input by pdiff_hf."""


class SelectionError(PDiffError):
    """A parameter selection matched nothing, or matched something it cannot flatten."""


class LayoutMismatchError(PDiffError):
    """A parameter vector, state dict or module does not match a recorded parameter layout."""


class DimensionMismatchError(PDiffError):
    """A tensor or dataset has a parameter dimension ``D`` other than the one a model was built for."""


class NonFiniteParametersError(PDiffError):
    """Checkpoints or generated parameters contain NaN or Inf values."""


class SchedulerError(PDiffError):
    """A scheduler is unknown or incompatible with the objective the denoiser was trained with."""


class CheckpointDatasetError(PDiffError):
    """A checkpoint dataset lacks the expected columns, layout metadata or rows."""


class HubError(PDiffError):
    """A Hugging Face Hub operation failed: the repo, revision or a file of it is missing, the Hub could not be
    reached, or it refused the request. Messages name the repo and never contain the access token."""
