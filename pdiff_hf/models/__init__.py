from .autoencoder import ParameterAutoencoder, ParameterAutoencoderOutput
from .denoiser import LatentUNet1DModel, LatentUNet1DOutput

__all__ = ["ParameterAutoencoder", "ParameterAutoencoderOutput", "LatentUNet1DModel", "LatentUNet1DOutput"]
