"""What pipelines and checkpoint datasets on the Hub share: repo-id checks, the ``HfApi`` client, file names.

Only pdiff_hf's own checks raise here (:class:`~pdiff_hf.errors.HubError` for a malformed repo id,
:class:`~pdiff_hf.errors.LayoutMismatchError` for a layout that does not fit a network). Errors of
``huggingface_hub`` (``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``HfHubHTTPError``, …) are never caught
or re-sorted anywhere in :mod:`pdiff_hf.hub`: they already say what happened.
"""

from typing import Any

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from .. import __version__
from ..errors import HubError, LayoutMismatchError, first_line
from ..layout import ParamLayout

LIBRARY_NAME = "pdiff-hf"
# The parameter layout of a pipeline repo (one per repo) and of a checkpoint dataset (one per config).
LAYOUT_FILE = "param_layout.json"
LAYOUT_DIR = "param_layouts"


def check_repo_id(repo_id: Any, what: str = "a Hub repo id") -> str:
    """``repo_id`` as a string if it is a valid ``owner/name``; else :class:`HubError` (a repo id without owner
    would silently go to the token's own namespace, so the owner is required)."""
    text = str(repo_id)
    try:
        validate_repo_id(text)
    except HFValidationError as err:
        reason = first_line(err, type(err).__name__)
        raise HubError(f"expected {what} 'owner/name', found {text!r} ({reason})") from None
    if "/" not in text:
        raise HubError(f"expected {what} 'owner/name' with the owner, found {text!r}")
    return text


def hub_api(token: str | None = None, endpoint: str | None = None) -> HfApi:
    """An ``HfApi`` that identifies itself as pdiff-hf in its user agent."""
    return HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=__version__)


def endpoint_url(endpoint: str | None = None) -> str:
    """The Hub URL in use: ``endpoint`` or ``HF_ENDPOINT`` (read when huggingface_hub was imported)."""
    return (endpoint or constants.ENDPOINT).rstrip("/")


def check_target(layout: ParamLayout | None, target_module: nn.Module, label: str) -> None:
    """Raise :class:`LayoutMismatchError` naming ``label`` (the repo or folder) unless ``layout`` fits
    ``target_module``, so a pipeline or dataset for another network fails at load time, not at ``load_into``."""
    if layout is None:
        raise LayoutMismatchError(
            f"{label} records no parameter layout, so it cannot be checked against {type(target_module).__name__}"
        )
    try:
        layout.check_module(target_module)
    except LayoutMismatchError as err:
        raise LayoutMismatchError(
            f"the parameter layout of {label} does not match the requested target module: {err}"
        ) from None
