"""Classification: cross-entropy loss, top-1 accuracy in percent."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHANCE_SIGMAS = 3.0  # standard errors a lucky guess may reach above the commonest class's share (`chance_accuracy`)


class ClassificationTask:
    """Cross-entropy training, top-1 accuracy (percent) as the primary metric."""

    name = "classification"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[correct, loss sum, samples, then samples per target class (num_classes)], float64 on the CPU."""
        correct = (outputs.argmax(dim=1) == targets).sum()
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum")
        count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=outputs.device)
        per_class = torch.bincount(targets.flatten(), minlength=self.num_classes)[:self.num_classes].double()
        return torch.cat([torch.stack([correct.double(), loss_sum.double(), count]), per_class]).cpu()

    def finalize(self, stats: torch.Tensor) -> dict[str, float]:
        """Accuracy (the "metric"), its chance level (`chance_accuracy`) and the margin above it that a phase
        needs to count as recovered from chance (`chance_margin`, `report.clearly_above_chance`) in percent; mean
        loss."""
        correct, loss_sum, count = (float(v) for v in stats[:3])
        count = max(count, 1.0)
        accuracy = 100.0 * correct / count
        per_class = stats[3:].tolist()
        return {"metric": accuracy, "accuracy": accuracy, "loss": loss_sum / count,
                "chance": chance_accuracy(per_class), "chance_margin": chance_margin(per_class)}


def chance_accuracy(per_class: list[float]) -> float:
    """The accuracy (percent) a model that learned nothing reaches on a test set with these samples per class.

    Answering the commonest class everywhere (what a collapsed model does) scores its share p; guessing scores
    1/K on average, no more than p. A guess can be lucky, so `CHANCE_SIGMAS` standard errors of a share p over the
    n test samples, sqrt(p (1 - p) / n), are added: an accuracy at or below this level cannot be told from chance
    at about 3 sigma. Unlike a fixed multiple of 1/K (1.5 / K is 75 % for two classes) it holds for two classes,
    for unbalanced test sets and for large ones (1000 balanced classes, 50,000 samples: 0.14 %).
    """
    n = sum(per_class)
    if n <= 0:
        return 0.0
    p = max(per_class) / n
    return 100.0 * min(1.0, p + CHANCE_SIGMAS * math.sqrt(p * (1 - p) / n))


def chance_margin(per_class: list[float]) -> float:
    """`CHANCE_SIGMAS` standard errors of the commonest class's share over the test samples, in percent points:
    what `chance_accuracy` adds to that share, and what a metric must clear above the chance level to be clearly
    above it (`report.clearly_above_chance`). 0 for an empty test set."""
    n = sum(per_class)
    if n <= 0:
        return 0.0
    p = max(per_class) / n
    return 100.0 * CHANCE_SIGMAS * math.sqrt(p * (1 - p) / n)
