"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package, and the demo's small 1D CNN
(:class:`MNIST1DCNN`, defined in :mod:`pdiff_hf.tasks.mnist1d_cnn`)."""

import numpy as np
import torch

from ..evaluation.data import ClassificationSplits
from .mnist1d_cnn import MNIST1DCNN

__all__ = ["MNIST1DCNN", "load_mnist1d"]


def load_mnist1d(seed: int = 42, num_val: int = 500) -> ClassificationSplits:
    """MNIST-1D with the package defaults (4000 train, 1000 test, length 40); the last ``num_val`` training
    examples form the validation split. Inputs are ``(n, 1, 40)`` float32, labels ``(n,)`` int64."""
    import contextlib
    import io

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    with contextlib.redirect_stdout(io.StringIO()):
        data = make_dataset(args)
    x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))[:, None, :]
    y = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    xt = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32))[:, None, :]
    yt = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    n = x.shape[0] - num_val
    return ClassificationSplits(x[:n], y[:n], x[n:], y[n:], xt, yt)
