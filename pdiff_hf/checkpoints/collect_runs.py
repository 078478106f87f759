"""Collections over several runs of one network: independent runs (``collect_from_runs``, aligned by permutation
with ``align=True``: :mod:`pdiff_hf.alignment`) and branches of one early checkpoint (``collect_branches``). Each run
is collected by :func:`~pdiff_hf.checkpoints.collect.collect_checkpoints`; the dataset records how the runs relate."""

import copy
import json
import pickle
import time
import warnings
from typing import Any, Callable, Dict, Optional, Sequence

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import AlignmentError, CollectionError, DimensionMismatchError
from ..evaluation.data import iter_batches, split_sources
from ..layout import ParamLayout
from .dataset import PARAMS_COLUMN, checkpoint_params, get_layout, make_checkpoint_dataset, set_layout
from .run_mixing import MixedRunsWarning

from .collect import LossFn, collect_checkpoints, train_classifier, train_selection

ALIGNMENT_KEY = "pdiff_hf.alignment"  # in info.description: how collect_from_runs(align=True) aligned the runs
ALIGNMENTS = ("merge_many", "first")
MERGE_MANY_ROUNDS = 50  # a cap: merge_many stops at the first round that changes no permutation


def collect_from_runs(
    model: nn.Module,
    data: Any,
    layout: ParamLayout,
    seeds: Sequence[int],
    reset: Optional[Callable[[nn.Module, int], None]] = None,
    align: bool = False,
    example_input: Any = None,
    alignment_seed: int = 0,
    alignment: str = "merge_many",
    num_processes: int = 1,
    **kwargs,
) -> datasets.Dataset:
    """Collect from several runs that restart from ``model``'s current state, each with its own seed (data order
    and, through ``reset(model, seed)``, e.g. a re-initialized selection). Runs get ``run_id`` 0, 1, …; every run
    shares the tensors outside the selection, so all checkpoints load into the same base network.

    Warns (:class:`~pdiff_hf.checkpoints.run_mixing.MixedRunsWarning`) when ``reset`` is given, ``align`` is not, and
    ``layout`` selects every parameter of ``model``: the runs are then independent networks, whose weight-space
    average is meaningless (measured on MNIST-1D: independent seeds averaged fall to chance, 10%); use
    :func:`collect_branches`, or ``align=True``.

    ``align=True``: independent runs of the whole network, aligned by permutation (weight matching,
    :mod:`pdiff_hf.alignment`). Each run starts from ``reset(model, seed)`` (default: :func:`reinitialize`, every
    module's ``reset_parameters`` under ``torch.manual_seed(seed)``), is trained and collected as usual (pass
    ``train_epochs`` and ``num_checkpoints``: the last few checkpoints of each run). Then the runs are aligned, one
    permutation per run found from the runs' final states and applied to each of its checkpoints, in the first run's
    frame (run 0 is never moved):

    * ``alignment="merge_many"`` (default): every run aligned to the average of the others, round after round
      (:func:`pdiff_hf.alignment.merge_many`, order drawn from ``alignment_seed``). Its aligned averages are the
      better networks: 32 runs of ``MNIST1DCNN(channels=128)`` average to 92.1% against 89.2% (recalibrated);
    * ``alignment="first"``: every run matched to the first only (:func:`pdiff_hf.alignment.weight_matching`).

    Aligned checkpoints compute the same functions, so the evaluation columns stay as measured. The dataset records
    the alignment (:func:`get_alignment`: method, reference run and seed, permutation groups, seconds). The
    permutation spec comes from :func:`pdiff_hf.alignment.permutation_spec` (``example_input``: positional inputs for
    models without a hand-written spec; default: two rows of the first training batch).

    ``num_processes > 1`` trains the runs in that many spawned worker processes (each with ``torch.get_num_threads()
    // num_processes`` threads, at least 1); the result is the same as in one process with that many threads. The
    model, ``data``, ``reset`` and ``kwargs`` (``loss_fn``, ``score_fn``) must then be picklable (module-level
    functions, not lambdas), and a script that calls it needs the ``if __name__ == "__main__":`` guard.

    Raises:
        CollectionError: ``num_processes`` not an int >= 1, or something a worker needs that cannot be pickled,
            before any training.
        AlignmentError: with ``align=True``, before any training: an unknown ``alignment``, fewer than two seeds, a
            model without a permutation
            spec (residual adds, attention, …), a layout that leaves out a tensor the permutation moves (select
            the whole network with ``include_buffers=True``), or a ``reset`` that gives runs of different
            architectures.
    """
    if reset is not None and not align and len(seeds) > 1 and selects_whole_network(model, layout):
        warnings.warn(
            f"collect_from_runs: expected runs of one network (branches of one checkpoint), found {len(seeds)} runs "
            "re-initialized by reset= over a selection of every parameter: independent runs of a whole network lie "
            "in different basins, so averaging them in weight space is meaningless and p-diff will learn a mixture; "
            "use collect_branches (branches of one early checkpoint) or align=True (runs aligned by permutation)",
            MixedRunsWarning,
            stacklevel=2,
        )
    start = {k: v.clone() for k, v in model.state_dict().items()}
    spec = None
    if align:
        if alignment not in ALIGNMENTS:
            raise AlignmentError(f"expected alignment in {ALIGNMENTS}, found {alignment!r}")
        reset = reset if reset is not None else reinitialize
        spec = _alignment_spec(model, data, layout, seeds, reset, start, example_input)
    args = (model, data, layout, start, reset, kwargs, spec is not None)
    shared = _check_processes(num_processes, args)
    if shared is None:
        results = [_collect_run(*args, run_id, seed) for run_id, seed in enumerate(seeds)]
    else:
        import multiprocessing

        threads = max(1, torch.get_num_threads() // num_processes)
        with multiprocessing.get_context("spawn").Pool(num_processes, _init_worker, (shared, threads)) as pool:
            results = pool.starmap(_collect_in_worker, list(enumerate(seeds)))
    parts = [part for part, _ in results]
    finals = [final for _, final in results]
    record = None
    if spec is not None:
        from ..alignment.merge_many import merge_many

        begin = time.perf_counter()
        rounds = 0 if alignment == "first" else MERGE_MANY_ROUNDS
        perms = merge_many(spec, finals, max_rounds=rounds, seed=alignment_seed)
        parts = [parts[0]] + [_permute_run(spec, layout, parts[i], finals[i], perms[i]) for i in range(1, len(parts))]
        record = {"method": "weight_matching", "alignment": alignment, "reference_run_id": 0,
                  "reference_seed": int(seeds[0]), "alignment_seed": alignment_seed,
                  "seconds": round(time.perf_counter() - begin, 3), **spec.summary()}  # fmt: skip
    merged = set_layout(datasets.concatenate_datasets(parts), get_layout(parts[0]))
    if record is not None:
        merged.info.description = json.dumps({**json.loads(merged.info.description), ALIGNMENT_KEY: record})
    return merged


def _collect_run(model, data, layout, start, reset, kwargs, keep_final: bool, run_id: int, seed: int):
    """One run from ``start``: ``(its checkpoint dataset, its final state dict or None)``."""
    model.load_state_dict(start)
    if reset is not None:
        reset(model, seed)
    part = collect_checkpoints(model, data, layout, seed=seed, run_id=run_id, **kwargs)
    return part, ({k: v.detach().clone() for k, v in model.state_dict().items()} if keep_final else None)


def _check_processes(num_processes, shared) -> Optional[bytes]:
    """``None`` for one process, else the pickled ``shared`` arguments every worker needs (checked before any
    training)."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise CollectionError(f"expected num_processes to be an int >= 1, found {num_processes!r}")
    if num_processes == 1:
        return None
    try:
        return pickle.dumps(shared)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise CollectionError(
            f"expected a picklable model, data, reset and keyword arguments with num_processes={num_processes} (each "
            f"run trains in a spawned process; use module-level functions, not lambdas), found: {err}"
        ) from None


_WORKER: Dict[str, Any] = {}  # one worker process's shared arguments, set once by _init_worker


def _init_worker(shared: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["args"] = pickle.loads(shared)  # the parent's own pickle of its arguments, never read from a file


def _collect_in_worker(run_id: int, seed: int):
    return _collect_run(*_WORKER["args"], run_id, seed)


def get_alignment(dataset: datasets.Dataset) -> Optional[Dict[str, Any]]:
    """How the runs of a checkpoint dataset were aligned (``collect_from_runs(..., align=True)``): ``{"method":
    "weight_matching", "alignment": "merge_many" or "first", "reference_run_id": 0, "reference_seed",
    "alignment_seed", "seconds", "groups": {group: size}, "permuted_tensors"}``; ``None`` for a dataset whose runs
    were not aligned."""
    try:
        doc = json.loads(dataset.info.description or "")
    except ValueError:
        return None
    return doc.get(ALIGNMENT_KEY) if isinstance(doc, dict) else None


def reinitialize(model: nn.Module, seed: int) -> None:
    """Re-initialize every submodule that has ``reset_parameters`` (Linear, Conv, BatchNorm with its running
    statistics, …) under ``torch.manual_seed(seed)``: the default ``reset`` of independent runs."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _alignment_spec(model, data, layout, seeds, reset, start, example_input):
    """The permutation spec for ``collect_from_runs(align=True)``, with every check done before training."""
    from ..alignment.handwritten_specs import has_handwritten_spec, permutation_spec

    if len(seeds) < 2:
        raise AlignmentError(f"expected at least two seeds to align runs to the first, found {list(seeds)}")
    if example_input is None and not has_handwritten_spec(model):
        batch = next(iter_batches(split_sources(data)["train"], batch_size=2, model=model))
        if batch.kwargs:
            raise AlignmentError(
                f"expected example_input= for {type(model).__name__} (its batches are keyword inputs "
                f"{sorted(batch.kwargs)}), found None"
            )
        example_input = tuple(batch.args)
    spec = permutation_spec(model, example_input)
    missing = [name for name in spec.permuted_names if name not in set(layout.names)]
    if missing:
        raise AlignmentError(
            f"expected a layout that selects every tensor the alignment permutes (the whole network, "
            f"ParamLayout.from_module(model, include_buffers=True)), found {len(missing)} left out: {missing[:4]}"
        )
    probe = copy.deepcopy(model)  # every run's starting network has the reference's architecture
    for seed in seeds:
        probe.load_state_dict(start)
        reset(probe, seed)
        spec.check_state_dict(probe.state_dict(), f"state dict of the run with seed {seed}")
    return spec


def _permute_run(spec, layout: ParamLayout, part: datasets.Dataset, final_state, perms):
    """``part`` (one run's checkpoints) with every checkpoint permuted by ``perms`` (tensors outside the layout taken
    from the run's ``final_state``)."""
    from ..alignment.weight_matching import apply_permutation

    aligned = []
    for vector in checkpoint_params(part):
        state = {**final_state, **layout.unflatten(vector)}
        aligned.append(layout.flatten(apply_permutation(spec, state, perms)))
    columns = {c: part[c] for c in part.column_names if c != PARAMS_COLUMN}
    return make_checkpoint_dataset(torch.stack(aligned), layout, columns)


def selects_whole_network(model: nn.Module, layout: ParamLayout) -> bool:
    """Whether ``layout`` selects every trainable parameter of ``model`` (a whole network, not a subset trained on a
    shared base)."""
    selected = set(layout.names)
    return all(name in selected for name, p in model.named_parameters() if p.requires_grad)


def collect_branches(
    model: nn.Module,
    data: Any,
    layout: ParamLayout,
    num_branches: int = 10,
    checkpoints_per_branch: int = 20,
    trunk_epochs: int = 5,
    branch_epochs: int = 10,
    train_learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    loss_fn: Optional[LossFn] = None,
    **collect_kwargs,
) -> datasets.Dataset:
    """Diverse checkpoints of one network: branches of one early checkpoint, each trained with its own data order.

    1. trunk: train every parameter of ``model`` for ``trunk_epochs`` (:func:`train_classifier`, seed ``seed``) —
       the early checkpoint all branches share (``trunk_epochs=0``: ``model`` as it is);
    2. branches: from that checkpoint, train the selection for ``branch_epochs`` (AdamW, cosine schedule, data order
       of seed ``seed + 1000 * (b + 1)``), then collect ``checkpoints_per_branch`` checkpoints with
       :func:`collect_checkpoints` (same seed; ``collect_kwargs`` such as ``learning_rate``, ``save_every``,
       ``evaluate``, ``score_fn`` are passed on).

    The selection is what branches train; tensors outside it stay the trunk's, so every checkpoint loads into the same
    base network (for a whole network select everything, e.g. ``ParamLayout.from_module(model,
    include_buffers=True)``). Branches of one early checkpoint stay in one basin: their averages remain good networks,
    while independently seeded networks averaged without weight matching fall to chance (10% on MNIST-1D), so this is
    the recipe to learn the distribution of a whole network from.

    Returns:
        the checkpoint dataset ``(num_branches * checkpoints_per_branch, D)`` with ``run_id`` = branch index, ``seed``
        = the branch's data-order seed, ``step`` = step within the branch's collection. ``model`` is left at the
        trunk checkpoint.

    Raises:
        DimensionMismatchError: ``num_branches``, ``checkpoints_per_branch`` < 1, or negative epochs.
    """
    if num_branches < 1 or checkpoints_per_branch < 1 or trunk_epochs < 0 or branch_epochs < 0:
        raise DimensionMismatchError(
            "expected num_branches >= 1, checkpoints_per_branch >= 1, trunk_epochs >= 0 and branch_epochs >= 0, found "
            f"{num_branches}, {checkpoints_per_branch}, {trunk_epochs}, {branch_epochs}"
        )
    layout.check_module(model)
    for key in ("num_checkpoints", "seed", "run_id", "train_epochs"):
        if key in collect_kwargs:
            raise DimensionMismatchError(f"expected collect_branches' own arguments, found {key}= (set per branch)")
    if trunk_epochs > 0:
        torch.manual_seed(seed)
        train_classifier(model, data, epochs=trunk_epochs, learning_rate=train_learning_rate, seed=seed,
                         progress=progress, loss_fn=loss_fn)  # fmt: skip
    trunk = {k: v.clone() for k, v in model.state_dict().items()}
    parts = []
    for b in tqdm(range(num_branches), desc="branches", disable=not progress, leave=False):
        branch_seed = seed + 1000 * (b + 1)
        model.load_state_dict(trunk)
        if branch_epochs > 0:
            train_selection(model, data, layout, branch_epochs, train_learning_rate, branch_seed, loss_fn)
        parts.append(
            collect_checkpoints(
                model, data, layout, num_checkpoints=checkpoints_per_branch, seed=branch_seed, run_id=b,
                progress=False, loss_fn=loss_fn, **collect_kwargs,
            )  # fmt: skip
        )
    model.load_state_dict(trunk)
    merged = datasets.concatenate_datasets(parts)
    return set_layout(merged, get_layout(parts[0]))
