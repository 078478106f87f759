"""pipe(num_models=...) beyond the device's free memory is a PipelineInputError with the figures, before any
allocation (pipelines/pipeline_memory.py)."""

import pytest
import torch

from pdiff_hf.errors import PipelineInputError
from pdiff_hf.pipelines import pipeline_pdiff
from pdiff_hf.pipelines.pipeline_memory import available_bytes, check_sampling_memory, sampling_bytes_per_model

torch.set_num_threads(1)


def test_a_billion_models_refused_before_allocating(tiny_pipeline, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("latents were allocated before the call was checked")

    monkeypatch.setattr(pipeline_pdiff, "randn_tensor", never)
    with pytest.raises(PipelineInputError, match=r"num_models=1000000000: about \d+\.\d GiB .* GiB free; generate at most \d+ models"):
        tiny_pipeline(num_models=10**9, num_inference_steps=2)


def test_a_few_models_still_sample(tiny_pipeline):
    out = tiny_pipeline(num_models=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (3, tiny_pipeline.autoencoder.config.in_dim)


def test_figure_and_largest_count(tiny_pipeline):
    ae, denoiser = tiny_pipeline.autoencoder, tiny_pipeline.denoiser
    shape, dim = tuple(ae.latent_shape), ae.config.in_dim
    latent, activation, decoded = sampling_bytes_per_model(shape, dim, denoiser.config)
    per_model = latent + activation + decoded
    assert latent == 4 * 8 * shape[0] * shape[1] and decoded == 4 * dim  # 6 copies + solver order 2, float32
    check_sampling_memory(10, shape, dim, denoiser.config, torch.device("cpu"), available=10 * per_model)  # fits
    with pytest.raises(PipelineInputError, match=r"found num_models=11: .* generate at most 10 models per call"):
        check_sampling_memory(11, shape, dim, denoiser.config, torch.device("cpu"), available=10 * per_model + 1)
    guided = sampling_bytes_per_model(shape, dim, denoiser.config, guidance=True)
    assert guided[1] == 2 * activation and guided[0] > latent


def test_available_bytes_of_the_host():
    free = available_bytes(torch.device("cpu"))
    assert free is None or free > 0
    assert available_bytes(torch.device("meta")) is None
