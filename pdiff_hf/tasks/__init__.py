"""Small built-in tasks for demos and tests (no downloads)."""

from .mnist1d import MNIST1DCNN, load_mnist1d

__all__ = ["MNIST1DCNN", "load_mnist1d"]
