"""Data types shared by the novelty modules, with no imports of their own beyond torch: the analysis
(:mod:`.metrics`) builds them, the intervals (:mod:`.intervals`) and the report (:mod:`.report`) read them, and none of
those needs to import another to name them (no import circle, not even a type-only one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch


@dataclass
class GroupMetrics:
    """Per-model metrics of one group (``original``, ``generated`` or a baseline); tensors have one entry per
    model. ``nn_index`` / ``max_iou_index`` index the training checkpoints."""

    name: str
    kind: str
    params: torch.Tensor
    test_accuracy: torch.Tensor
    val_accuracy: Optional[torch.Tensor]
    nn_distance: torch.Tensor
    nn_index: torch.Tensor
    max_iou: torch.Tensor
    max_iou_index: torch.Tensor
    max_agreement: torch.Tensor
    nn_agreement: torch.Tensor
    distance_to_mean: torch.Tensor
    mean_model_agreement: torch.Tensor
    pairwise_mean_iou: Optional[float]
    settings: Dict = field(default_factory=dict)
    mean_model_agrees: Optional[torch.Tensor] = None  # (n, N_test) bool: same test prediction as the mean model
    test_predictions: Optional[torch.Tensor] = None  # (n, N_test) int64: predicted class of every test example

    @property
    def count(self) -> int:
        return int(self.test_accuracy.numel())
