"""Shared tiny fixtures. Everything here is built from configs with random init: no downloads, no real data."""

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


def pytest_configure(config):
    # torch tensors going through numpy inside some diffusers schedulers (KDPM2, DEIS, UniPC, ...) warn on NumPy 2
    for message in ("__array_wrap__ must accept context", "__array__ implementation doesn't accept a copy keyword"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def make_bn_mlp(seed: int = 0, in_features: int = 6, hidden: int = 8, num_classes: int = 3) -> nn.Sequential:
    """Linear-BN-ReLU x2 then a linear classifier, with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.2, 3.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture
def bn_mlp() -> nn.Sequential:
    return make_bn_mlp()


@pytest.fixture
def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return ViTForImageClassification(config).eval()


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def make_tiny_models(layout, latent_channels: int = 2, seed: int = 0, **denoiser_kwargs):
    """An untrained ParameterAutoencoder + LatentUNet1DModel pair sized for ``layout``, as small as possible."""
    from pdiff_hf import LatentUNet1DModel, ParameterAutoencoder

    torch.manual_seed(seed)
    ae = ParameterAutoencoder(
        in_dim=layout.dim,
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        pos_channels=2,
        param_layout=layout.to_list(),
    )
    denoiser = LatentUNet1DModel(
        in_channels=latent_channels,
        sample_length=ae.latent_length,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        **denoiser_kwargs,
    )
    return ae.eval(), denoiser.eval()


def make_tiny_pipeline(layout, num_checkpoints: int = 12, seed: int = 0):
    """A ready PDiffPipeline (untrained networks, but fitted normalization, latent scaling and ``sample_abs_max``)
    with a DPM-Solver scheduler, plus the fake checkpoints it was fitted on."""
    from pdiff_hf import PDiffPipeline
    from pdiff_hf.training.training_utils import sampling_scheduler_for

    ae, denoiser = make_tiny_models(layout, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(num_checkpoints, layout.dim, generator=gen) * 0.1 + 0.5
    log_mask = layout.log_space_mask()
    params[:, log_mask] = params[:, log_mask].abs() + 0.5  # running variances are positive
    ae.fit_normalization(params)
    ae.set_latent_scaling(params)
    latents = ae.params_to_latents(params)
    denoiser.register_to_config(sample_abs_max=round(float(latents.abs().max()), 4))
    pipe = PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    return pipe, params


@pytest.fixture(scope="module")
def bn_layout():
    from pdiff_hf import ParamLayout

    return ParamLayout.from_module(make_bn_mlp(), last_norm_layers=2, include_buffers=True)


@pytest.fixture(scope="module")
def tiny_pipeline(bn_layout):
    pipe, _ = make_tiny_pipeline(bn_layout)
    return pipe


@pytest.fixture(scope="session")
def bn_mlp_factory():
    """``make_bn_mlp(seed=0, ...)`` for tests that need several independent copies."""
    return make_bn_mlp


@pytest.fixture(scope="session")
def tiny_models_factory():
    """``make_tiny_models(layout, latent_channels=2, seed=0, **denoiser_kwargs)``."""
    return make_tiny_models


@pytest.fixture(scope="session")
def tiny_pipeline_factory():
    """``make_tiny_pipeline(layout, num_checkpoints=12, seed=0) -> (pipe, params)``."""
    return make_tiny_pipeline
