"""Keeping credentials out of everything pdiff_hf writes or uploads: training settings lose every key that names a
token, secret, password or API key, and known access tokens (the one given, ``HF_TOKEN``, the saved login) and
``Bearer`` credentials are replaced by ``***`` in any text."""

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import get_token

_SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|authorization", re.IGNORECASE)


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
