from .autoencoder import ParameterAutoencoder, ParameterAutoencoderOutput
from .denoiser import LatentUNet1DModel, LatentUNet1DOutput
from .token_autoencoder import TokenParameterAutoencoder

__all__ = [
    "ParameterAutoencoder",
    "ParameterAutoencoderOutput",
    "LatentUNet1DModel",
    "LatentUNet1DOutput",
    "TokenParameterAutoencoder",
]
