"""Checkpoint collections as ``datasets.Dataset``.

One row per checkpoint: a fixed-size float32 ``params`` column of length ``D`` plus metadata columns (``run_id``,
``seed``, ``step``, ``val_accuracy``, ``test_accuracy``, …). The parameter layout is stored in the dataset's
``info.description`` as JSON, so ``save_to_disk``/``load_from_disk`` (and ``select``, ``filter``, splits) keep it.

A *conditional* checkpoint dataset (checkpoints of several tasks of one network) also has an int ``condition``
column (task ids ``0 … K-1``) and the task names in the same JSON (``condition_names``, ``K`` of them):
:func:`checkpoint_conditions` reads the ids for ``fit_pdiff(..., conditions=...)``, :func:`get_condition_names` the
names. Datasets without them are unconditional, as before.

The ``params`` column has the features ``datasets.Features({"params": Sequence(Value("float32"), length=D)})``
would give, but is built from one Arrow buffer and read back as one Arrow array: for 200 checkpoints of
D = 10^5, 0.22 s to build against 5.5 s for ``Dataset.from_dict(..., features=...)``, and 0.03 s to read (NaN/Inf
check included) against 0.10 s for ``with_format("torch")``
(``OMP_NUM_THREADS=1 python benchmarks/bench_checkpoint_dataset.py --repeats 5``, medians).
"""

import hashlib
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..errors import CheckpointDatasetError, ConditionError, DimensionMismatchError, first_line
from ..layout import ParamLayout, check_finite
from .condition_ids import check_conditions

PARAMS_COLUMN = "params"
CONDITION_COLUMN = "condition"
_LAYOUT_KEY = "pdiff_hf.param_layout"
_CONDITION_NAMES_KEY = "pdiff_hf.condition_names"


def make_checkpoint_dataset(
    params: Union[torch.Tensor, np.ndarray],
    layout: ParamLayout,
    metadata: Optional[Mapping[str, Sequence]] = None,
    condition_names: Optional[Sequence[str]] = None,
) -> datasets.Dataset:
    """Build a checkpoint dataset from ``params`` ``(N, D)`` and per-row ``metadata`` columns.

    The ``params`` column is built from one Arrow buffer (no per-row Python objects), so large collections are cheap.
    Raises :class:`NonFiniteParametersError` for NaN/Inf and :class:`DimensionMismatchError` when ``D`` differs
    from the layout. ``condition_names``: the names of the tasks of a conditional dataset, whose ``metadata`` then
    has a ``condition`` column of ids in ``[0, len(condition_names))`` (:class:`ConditionError` otherwise).
    """
    params = torch.as_tensor(params).detach().to("cpu", torch.float32)
    if params.dim() != 2 or params.shape[1] != layout.dim:
        raise DimensionMismatchError(
            f"expected checkpoints of shape (N, {layout.dim}) for layout [{layout.describe()}], "
            f"found {tuple(params.shape)}"
        )
    check_finite(params, "checkpoints")
    n = params.shape[0]
    array = params.contiguous().numpy()
    # Our own fingerprint: without one, datasets hashes the table by pickling it (3.3 GB more peak memory at 200 x 1e6)
    digest = hashlib.sha256(array.reshape(-1).view(np.uint8))  # reads the buffer, no copy
    digest.update(json.dumps(layout.to_list()).encode())
    flat = pa.array(array.reshape(-1))
    columns = {PARAMS_COLUMN: pa.FixedSizeListArray.from_arrays(flat, layout.dim)}
    for name, values in (metadata or {}).items():
        values = values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)
        if len(values) != n:
            raise CheckpointDatasetError(f"metadata column {name!r}: expected {n} values, found {len(values)}")
        columns[name] = pa.array(values)
        digest.update(json.dumps([name, values], default=str).encode())
    table = pa.table(columns)
    features = datasets.Features.from_arrow_schema(table.schema)
    info = datasets.DatasetInfo(description=json.dumps({_LAYOUT_KEY: layout.to_list()}), features=features)
    dataset = datasets.Dataset(datasets.table.InMemoryTable(table), info=info, fingerprint=digest.hexdigest()[:32])
    if condition_names is not None:
        set_condition_names(dataset, condition_names)
        checkpoint_conditions(dataset)  # the ids fit the names
    return dataset


def _description(dataset: datasets.Dataset) -> dict:
    """The JSON document in ``info.description`` (empty when there is none or it is not JSON)."""
    try:
        doc = json.loads(dataset.info.description or "")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def get_layout(dataset: datasets.Dataset) -> ParamLayout:
    """The parameter layout stored with a checkpoint dataset."""
    try:
        return ParamLayout.from_list(json.loads(dataset.info.description or "")[_LAYOUT_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointDatasetError(
            "expected a checkpoint dataset with a parameter layout in info.description (made by "
            f"make_checkpoint_dataset), found description {str(dataset.info.description)[:80]!r}"
        ) from err


def set_layout(dataset: datasets.Dataset, layout: ParamLayout) -> datasets.Dataset:
    """Attach ``layout`` to a dataset that lost it (e.g. one rebuilt from parquet files); condition names stay."""
    dataset.info.description = json.dumps({**_description(dataset), _LAYOUT_KEY: layout.to_list()})
    return dataset


def set_condition_names(dataset: datasets.Dataset, names: Sequence[str]) -> datasets.Dataset:
    """Record the task names of a conditional checkpoint dataset (``names[k]`` is condition id ``k``); the layout
    stays. :class:`ConditionError` for an empty list, non-strings or repeated names."""
    names = list(names)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConditionError(f"expected a non-empty list of distinct condition names, found {names!r}")
    dataset.info.description = json.dumps({**_description(dataset), _CONDITION_NAMES_KEY: names})
    return dataset


def get_condition_names(dataset: datasets.Dataset) -> Optional[List[str]]:
    """The task names of a conditional checkpoint dataset, ``None`` for an unconditional one."""
    names = _description(dataset).get(_CONDITION_NAMES_KEY)
    return list(names) if names is not None else None


def checkpoint_conditions(
    dataset: datasets.Dataset, column: str = CONDITION_COLUMN, num_conditions: Optional[int] = None
) -> torch.Tensor:
    """The condition id of every checkpoint, ``(N,)`` int64, for ``fit_pdiff(..., conditions=...)``.

    ``num_conditions`` defaults to the number of ``condition_names`` recorded with the dataset (else ``max id + 1``).
    :class:`ConditionError` (before any training) for a missing column, non-integer values, or ids outside
    ``[0, num_conditions)``."""
    if column not in dataset.column_names:
        raise ConditionError(
            f"expected a condition column {column!r} in the checkpoint dataset, found columns {dataset.column_names}"
        )
    values = dataset.with_format("arrow")[:][column]
    if not (pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)) or values.null_count:
        raise ConditionError(
            f"expected integer condition ids in column {column!r}, found type {values.type}"
            + (f" with {values.null_count} missing values" if values.null_count else "")
        )
    ids = torch.from_numpy(values.to_numpy(zero_copy_only=False).astype(np.int64))
    if num_conditions is None:
        names = get_condition_names(dataset)
        num_conditions = len(names) if names is not None else int(ids.max()) + 1 if ids.numel() else 0
    return check_conditions(ids, num_conditions, where=f" in column {column!r}")


def checkpoint_params(dataset: datasets.Dataset, check: bool = True) -> torch.Tensor:
    """All checkpoints of ``dataset`` as one float32 tensor ``(N, D)``, read from the Arrow column in one copy."""
    if PARAMS_COLUMN not in dataset.column_names:
        raise CheckpointDatasetError(
            f"expected a {PARAMS_COLUMN!r} column of fixed-size float32 lists, found columns {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise CheckpointDatasetError("expected at least one checkpoint, found an empty dataset")
    column = dataset.with_format("arrow")[:][PARAMS_COLUMN].combine_chunks()
    try:
        if not pa.types.is_fixed_size_list(column.type):
            column = column.cast(pa.list_(pa.float32(), len(column[0])))
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise CheckpointDatasetError(
            f"expected the {PARAMS_COLUMN!r} column to hold lists of floats of one length, found type {column.type} "
            f"({first_line(err, type(err).__name__)})"
        ) from err
    params = torch.from_numpy(values.reshape(len(dataset), -1).copy())
    if check:
        check_finite(params, "checkpoints")
    return params


def check_dataset_layout(dataset: datasets.Dataset, layout: ParamLayout, what: str = "the model") -> ParamLayout:
    """Raise :class:`DimensionMismatchError` unless ``dataset``'s layout equals ``layout``."""
    found = get_layout(dataset)
    if found != layout:
        raise DimensionMismatchError(
            f"checkpoint dataset layout [{found.describe()}] does not match {what} [{layout.describe()}]"
        )
    return found


def split_by_runs(
    dataset: datasets.Dataset, holdout_runs: Sequence, run_column: str = "run_id"
) -> Tuple[datasets.Dataset, datasets.Dataset]:
    """Split into ``(train, holdout)`` keeping every checkpoint of a run on one side."""
    if run_column not in dataset.column_names:
        raise CheckpointDatasetError(f"expected a {run_column!r} column, found {dataset.column_names}")
    runs = dataset[run_column]
    held = set(holdout_runs)
    unknown = held - set(runs)
    if unknown:
        raise CheckpointDatasetError(f"holdout runs {sorted(unknown)} not in dataset runs {sorted(set(runs))}")
    train_idx = [i for i, r in enumerate(runs) if r not in held]
    hold_idx = [i for i, r in enumerate(runs) if r in held]
    return dataset.select(train_idx), dataset.select(hold_idx)


def summary(dataset: datasets.Dataset) -> Dict:
    """Counts for printing: checkpoints, runs, D."""
    out = {"checkpoints": len(dataset), "D": get_layout(dataset).dim}
    if "run_id" in dataset.column_names:
        out["runs"] = len(set(dataset["run_id"]))
    names = get_condition_names(dataset)
    if names is not None:
        out["conditions"] = len(names)
    return out


