"""The reconstruction gate: held-out checkpoints through the autoencoder and a same-size PCA code, evaluated as
networks; the gate passes a faithful autoencoder and flags a broken one."""

import pytest
import torch
from torch import nn

from pdiff_hf.errors import CheckpointDatasetError
from pdiff_hf.novelty.reconstruction import (
    pca_reconstruct,
    reconstruction_lines,
    reconstruction_report,
)

from .helpers import make_task


class FakeAutoencoder(nn.Module):
    """Standardizes with the training statistics; ``latent`` of ``numel`` numbers. ``broken``: decodes every latent to
    the all-zero parameter vector (a dead classifier head)."""

    def __init__(self, train: torch.Tensor, numel: int, broken: bool = False):
        super().__init__()
        self.mean, self.std, self.numel, self.broken = train.mean(0), train.std(0), numel, broken

    @property
    def latent_shape(self):
        return (1, self.numel)

    def normalize(self, p):
        return (p - self.mean) / self.std

    def denormalize(self, z):
        return z * self.std + self.mean

    def params_to_latents(self, p):
        return self.normalize(p)[:, None, :]  # identity code, latent (B, 1, D)

    def latents_to_params(self, latents):
        out = self.denormalize(latents[:, 0])
        return torch.zeros_like(out) if self.broken else out


@pytest.fixture(scope="module")
def setup():
    model, layout, data, train, fresh, _ = make_task()
    return model, layout, data, train, fresh(8)


def test_pca_reconstructs_the_training_span_exactly_and_caps_components():
    g = torch.Generator().manual_seed(0)
    z_train = torch.randn(6, 20, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pca_reconstruct(z_train, z_train, 100), z_train)  # capped at T - 1 = 5 = full rank
    inside = z_train.mean(0) + 0.3 * (z_train[1] - z_train[0])
    torch.testing.assert_close(pca_reconstruct(z_train, inside[None], 5)[0], inside)
    torch.testing.assert_close(pca_reconstruct(z_train, z_train[:2], 0), z_train.mean(0).expand(2, -1))
    rough = pca_reconstruct(z_train, z_train, 1)
    assert (rough - z_train).norm() > (pca_reconstruct(z_train, z_train, 3) - z_train).norm() > 1e-6


def test_a_faithful_autoencoder_passes_and_matches_the_held_out_checkpoints(setup):
    model, layout, data, train, held = setup
    ae = FakeAutoencoder(train, numel=layout.dim)
    ae.train()
    rec = reconstruction_report(model, layout, ae, train, held, data)
    assert ae.training  # mode restored
    assert rec["autoencoder"]["test_accuracy"] == rec["heldout"]["test_accuracy"]
    assert rec["autoencoder"]["rms_error"]["median"] < 1e-5
    assert rec["gate"]["passed"] and rec["lower_error_than_pca"] and rec["lower_error_than_mean"]
    assert rec["mean_rms_error"]["median"] > 0.5  # held-out checkpoints lie about one std from the mean per entry
    assert rec["latent_numel"] == layout.dim and rec["pca_components"] == train.shape[0] - 1
    assert rec["heldout"]["count"] == 8 and rec["pca"]["rms_error"]["median"] > 0.1  # held-out: outside the span
    assert "**PASSED**" in "\n".join(reconstruction_lines(rec))


def test_a_broken_autoencoder_fails_the_gate(setup):
    model, layout, data, train, held = setup
    rec = reconstruction_report(model, layout, FakeAutoencoder(train, numel=4, broken=True), train, held, data)
    assert not rec["gate"]["passed"] and not rec["beats_pca"] and not rec["lower_error_than_pca"]
    assert not rec["lower_error_than_mean"] and "NOT lower" in "\n".join(reconstruction_lines(rec))
    assert rec["autoencoder"]["val_accuracy"]["median"] < rec["heldout"]["val_accuracy"]["median"] - 1.0
    assert rec["pca_components"] == 4
    assert "FAILED" in "\n".join(reconstruction_lines(rec))


def test_needs_held_out_and_training_checkpoints(setup):
    model, layout, data, train, held = setup
    ae = FakeAutoencoder(train, numel=4)
    with pytest.raises(CheckpointDatasetError, match="held-out"):
        reconstruction_report(model, layout, ae, train, held[:0], data)
    with pytest.raises(CheckpointDatasetError, match="expected >= 2 training"):
        reconstruction_report(model, layout, ae, train[:1], held, data)
