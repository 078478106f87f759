from .autoencoder import ParameterAutoencoder, ParameterAutoencoderOutput
from .autoencoder_base import ParameterAutoencoderMixin
from .denoiser import LatentUNet1DModel, LatentUNet1DOutput
from .linear_autoencoder import LinearParameterAutoencoder
from .token_autoencoder import TokenParameterAutoencoder

# Every autoencoder class of pdiff_hf by the name saved configs record (``_class_name`` in config.json, the class name
# in model_index.json) -> the module defining it. The one place that maps names to classes: the training scripts,
# resume, EMA and the Hub loader all go through autoencoder_class().
AUTOENCODER_MODULES = {
    "ParameterAutoencoder": "autoencoder",
    "TokenParameterAutoencoder": "token_autoencoder",
    "LinearParameterAutoencoder": "linear_autoencoder",
}


def autoencoder_class(name: str) -> type:
    """The autoencoder class saved under ``name`` (``config["_class_name"]``); :class:`~pdiff_hf.errors.PDiffError`
    naming the known classes for any other name. Nothing outside :data:`AUTOENCODER_MODULES` is ever imported."""
    import importlib

    if name not in AUTOENCODER_MODULES:
        from ..errors import PDiffError

        raise PDiffError(
            f"expected an autoencoder class of pdiff_hf ({', '.join(AUTOENCODER_MODULES)}), found {name!r}"
        )
    return getattr(importlib.import_module(f".{AUTOENCODER_MODULES[name]}", __name__), name)


__all__ = [
    "ParameterAutoencoder",
    "ParameterAutoencoderOutput",
    "LatentUNet1DModel",
    "LatentUNet1DOutput",
    "TokenParameterAutoencoder",
    "LinearParameterAutoencoder",
    "ParameterAutoencoderMixin",
    "AUTOENCODER_MODULES",
    "autoencoder_class",
]
