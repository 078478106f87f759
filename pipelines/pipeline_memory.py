"""How much memory a ``PDiffPipeline`` call needs, checked before anything is allocated.

``pipe(num_models=10**9)`` would otherwise ask for hundreds of GB in its first ``randn``; :func:`check_sampling_memory`
estimates the call's peak and raises :class:`~pdiff_hf.errors.PipelineInputError` with the figures when it exceeds
what the device has free, naming the largest ``num_models`` that fits. The estimate (float32 values per model):

* latents ``C x L`` about ``6 + solver order`` times (noise, the denoiser's prediction, the scheduler's step and its
  history; doubled inputs and outputs under classifier-free guidance);
* the denoiser's activations: two tensors of ``max(block_out_channels) x L`` per resnet block (its output, kept for
  the skip connection, and one intermediate);
* the decoded parameters ``D`` (the ``(num_models, D)`` output; decoding itself goes a chunk of rows at a time).

The estimate errs high: for the tests' tiny pipeline (D = 64, latents 2 x 16, denoiser channels (8, 16), 3 DPM-Solver++
steps, CPU, 1 thread, shared 2-core machine) the measured peak RSS increase was 273-358 MiB for 20,000 models and
816-860 MiB for 60,000 (runs of ``OMP_NUM_THREADS=1 python benchmarks/bench_pipeline_memory.py N``), against
estimates of 415 and 1,245 MiB.
"""

import os
from typing import Optional, Tuple

import torch

from pdiff_hf.errors import PipelineInputError


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory of ``device`` in bytes: CUDA's free memory, or the host's available memory for the CPU;
    ``None`` where it cannot be known (then nothing is refused). On Linux the host figure is ``MemAvailable`` of
    ``/proc/meminfo`` (free memory plus the page cache that can be dropped), else the free physical pages."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # free + reclaimable pages are not in POSIX; free physical pages are (no extra package: this file is bundled)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def sampling_bytes_per_model(latent_shape: Tuple[int, int], dim: int, denoiser_config, guidance: bool = False,
                             solver_order: int = 2, bytes_per_value: int = 4) -> Tuple[int, int, int]:  # fmt: skip
    """``(latent bytes, denoiser activation bytes, decoded parameter bytes)`` one model adds to a call's peak."""
    channels, length = latent_shape
    copies = 6 + solver_order + (4 if guidance else 0)
    latent = copies * channels * length
    blocks = list(denoiser_config.block_out_channels)
    resnets = 2 * len(blocks) * (denoiser_config.layers_per_block + 1) + 2  # down, up and the two mid blocks
    # two tensors of max(blocks) x L per resnet block (its output kept for the skip connection, one intermediate):
    # the whole estimate was 1.2x to 1.5x the measured peak of the tiny test pipeline (see the module docstring)
    activation = (2 if guidance else 1) * 2 * max(blocks) * length * resnets
    return latent * bytes_per_value, activation * bytes_per_value, dim * bytes_per_value


def check_sampling_memory(num_models: int, latent_shape: Tuple[int, int], dim: int, denoiser_config,
                          device: torch.device, guidance: bool = False, solver_order: int = 2,
                          available: Optional[int] = None) -> None:  # fmt: skip
    """Raise :class:`PipelineInputError` if sampling ``num_models`` models (latents ``latent_shape``, vectors of
    ``dim`` values) needs more memory than ``device`` has free (``available`` bytes, measured when ``None``)."""
    latent, activation, decoded = sampling_bytes_per_model(latent_shape, dim, denoiser_config, guidance, solver_order)
    per_model = latent + activation + decoded
    needed = num_models * per_model
    free = available_bytes(device) if available is None else available
    if free is None or needed <= free:
        return
    gib = 2**30
    fits = max(free // per_model, 0)
    raise PipelineInputError(
        f"expected num_models whose sampling fits in the memory of {device}, found num_models={num_models}: about "
        f"{needed / gib:.1f} GiB (latents {num_models * latent / gib:.1f} GiB, denoiser activations "
        f"{num_models * activation / gib:.1f} GiB, decoded parameters {num_models} x D={dim} = "
        f"{num_models * decoded / gib:.1f} GiB) against {free / gib:.1f} GiB free; generate at most {fits} models "
        "per call"
    )
