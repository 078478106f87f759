"""Table cells of the model and dataset cards: one formatting for every card writer (``cards``, ``condition_cards``)."""

import math
from collections.abc import Mapping
from typing import Any

SUMMARY_KEYS = ("count", "best", "mean", "median", "min", "std")



def format_cell(value: Any) -> str:
    """One table cell: floats to 6 significant digits, lists inline, ``|`` and newlines escaped."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_cell(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")



def format_summary_value(summary: Mapping, key: str) -> str:
    value = summary.get(key)
    if value is None:
        return "–"
    if key == "count" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return format_cell(value)
    return "nan" if math.isnan(value) else f"{value:.2f}"
