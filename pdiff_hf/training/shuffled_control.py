"""The shuffled-condition control of a conditional pipeline: the same training with the condition ids permuted
across rows, which catches a pipeline that ignores its condition."""

import torch

from ..checkpoints.conditional import check_conditions
from ..errors import ConditionError
from .config import PDiffConfig
from .fit import train_denoiser
from .training_utils import build_denoiser, sampling_scheduler_for


def shuffle_conditions(conditions: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same condition ids, permuted across rows by a seeded random permutation: each task keeps its number of
    rows, but a row's id no longer says which task its parameters solve (the shuffled-condition control)."""
    conditions = torch.as_tensor(conditions).long()
    perm = torch.randperm(conditions.numel(), generator=torch.Generator().manual_seed(seed))
    return conditions[perm]



def fit_shuffled_control(pipe, params: torch.Tensor, conditions: torch.Tensor, config=None, seed: int = 0, progress: bool = True):
    """The shuffled-condition control of a pipeline made by ``fit_pdiff(params, layout, config, conditions=...)``:
    the same training with the condition ids permuted across rows (:func:`shuffle_conditions` with ``seed``).

    ``fit_pdiff`` trains the autoencoder without looking at the conditions, so it would train ``pipe``'s
    autoencoder again bit for bit; the control reuses it and trains only a new denoiser, exactly as ``fit_pdiff``
    does (same seed, same settings, same condition names), on the shuffled ids. Returns ``(control pipeline,
    shuffled ids)``. A pipeline that follows its condition should score far higher on the requested task than its
    control; one that ignores it scores the same."""
    import dataclasses


    config = config or PDiffConfig()
    k = pipe.denoiser.config.get("num_conditions", 0)
    if not k:
        raise ConditionError("expected a conditional pipeline (denoiser.config.num_conditions > 0), found an unconditional one")
    conditions = check_conditions(conditions, k, params.shape[0])
    shuffled = shuffle_conditions(conditions, seed)
    config = dataclasses.replace(config, num_conditions=k)
    with torch.no_grad():
        latents = pipe.autoencoder.params_to_latents(params).float()
    torch.manual_seed(config.seed)
    denoiser = build_denoiser(pipe.autoencoder, config, condition_names=pipe.denoiser.config.get("condition_names"))
    train_denoiser(denoiser, latents, config, progress=progress, conditions=shuffled)
    control = type(pipe)(autoencoder=pipe.autoencoder, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    return control, shuffled
