"""Classification: cross-entropy loss, top-1 accuracy in percent."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassificationTask:
    """Cross-entropy training, top-1 accuracy (percent) as the primary metric."""

    name = "classification"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        correct = (outputs.argmax(dim=1) == targets).sum()
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum")
        count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=outputs.device)
        return torch.stack([correct.double(), loss_sum.double(), count]).cpu()

    def finalize(self, stats: torch.Tensor) -> dict[str, float]:
        correct, loss_sum, count = (float(v) for v in stats)
        count = max(count, 1.0)
        return {"metric": 100.0 * correct / count, "accuracy": 100.0 * correct / count, "loss": loss_sum / count}
