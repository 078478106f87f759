"""Keeping credentials out of everything pdiff_hf writes or uploads: training settings lose every key that names a
token, secret, password or API key, and known access tokens (the one given, ``HF_TOKEN``, the saved login), anything
shaped like a Hugging Face token (``hf_`` + 30 or more letters and digits, whoever's it is), the values of flags and
keys named like credentials (``--hub_token VALUE``, ``"api_key": …``) and ``Bearer`` credentials are replaced by
``***`` in any text: model and dataset cards, ``results.json`` and args files (:func:`redact_value`, used by
:func:`pdiff_hf.utils.io_utils.write_json_atomic`) and, after :func:`install_log_redaction`, log records."""

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


# A key or flag that holds a credential: one whose name *ends* in token, secret, password, API key, credential(s) or
# authorization (``hub_token``, ``--hf-token``, ``HF_TOKEN``, ``api_key``), not sizes such as ``ae_token_size``.
_SECRET_NAME = r"(?:[A-Za-z0-9]+[_.-])*(?:token|secret|password|passwd|api[_-]?key|credentials?|authorization)"
# Anything shaped like a Hugging Face access token, whoever it belongs to.
HF_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
_FLAG_VALUE = re.compile(rf"(?i)(--?{_SECRET_NAME})(=|\s+)(?!--)(\S+)")
_KEY_VALUE = re.compile(rf"""(?i)((?<![A-Za-z0-9_.-]){_SECRET_NAME}["']?\s*[:=]\s*)(["']?)([^\s"',;}}\]]+)""")


def is_secret_key(key: Any) -> bool:
    """Whether a setting named ``key`` holds a credential (``token``, ``hub_token``, ``HF_TOKEN``, ``api_key``,
    ``password`` …; not ``ae_token_size`` or ``num_tokens``)."""
    return re.fullmatch(f"(?i)-*{_SECRET_NAME}", str(key)) is not None


def redact(text: str, token: Any = None) -> str:
    """``text`` with credentials replaced by ``***``: every known access token (the given one, ``HF_TOKEN``, the saved
    login), anything token-shaped (``hf_`` and 30 or more letters and digits), the value of a flag or key named like
    a credential (``--hub_token VALUE``, ``--hf-token=VALUE``, ``token=VALUE``, ``"api_key": "VALUE"``) and any
    ``Bearer …`` credential."""
    return _redact(text, _known_secrets(token))


def _redact(text: str, known: list[str]) -> str:
    for secret in known:
        text = text.replace(secret, "***")
    text = HF_TOKEN_PATTERN.sub("***", text)
    text = re.sub(r"(?i)(bearer\s+)(?!\*\*\*)[^\s;,]+", r"\1***", text)
    text = _FLAG_VALUE.sub(lambda m: m.group(0) if m.group(3).startswith("***") else f"{m.group(1)}{m.group(2)}***", text)
    return _KEY_VALUE.sub(_key_value, text)


def _key_value(match: "re.Match") -> str:
    value = match.group(3)
    if value.startswith("***") or value.lower() in ("null", "none", "bearer"):  # nothing to hide, or Bearer's own rule
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}***"


def redact_value(value: Any, token: Any = None) -> Any:
    """A JSON-like ``value`` (dicts, lists, strings, numbers) with :func:`redact` applied to every string and the
    value of every key named like a credential (:func:`is_secret_key`) replaced by ``"***"`` (``None`` stays)."""
    return _redact_value(value, _known_secrets(token))


def _redact_value(value: Any, known: list[str]) -> Any:
    if isinstance(value, str):
        return _redact(value, known)
    if isinstance(value, Mapping):
        return {k: ("***" if is_secret_key(k) and v is not None else _redact_value(v, known)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # an argv list: the element after a credential flag is its value
        out = [_redact_value(v, known) for v in value]
        for i in range(1, len(out)):
            flag = value[i - 1]
            if isinstance(flag, str) and flag.startswith("-") and "=" not in flag and is_secret_key(flag):
                out[i] = "***"
        return out
    return value


class RedactingFilter:
    """A ``logging`` filter that redacts every record's message and arguments (:func:`redact`)."""

    def filter(self, record) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_log_redaction() -> None:
    """Redact credentials from every log record this process emits from now on (a record factory: handlers
    added later and every logger are covered). Idempotent."""
    import logging

    factory = logging.getLogRecordFactory()
    if getattr(factory, "_pdiff_redacting", False):
        return
    redacting = RedactingFilter()

    def make_record(*args, **kwargs):
        record = factory(*args, **kwargs)
        redacting.filter(record)
        return record

    make_record._pdiff_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


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
