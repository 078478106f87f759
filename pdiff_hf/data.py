"""Train / validation / test splits of a classification task, as tensors."""

from dataclasses import dataclass

import torch

from .errors import DimensionMismatchError


@dataclass
class ClassificationSplits:
    """Inputs ``(n, ...)`` and int64 labels ``(n,)`` of each split. Select models on ``val``, report on ``test``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self):
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise DimensionMismatchError(f"{split}: expected as many labels as inputs ({x.shape[0]}), found {y.shape[0]}")
            if x.shape[0] == 0:
                raise DimensionMismatchError(f"{split}: expected at least one example, found none")

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train_y, self.val_y, self.test_y]).max()) + 1

