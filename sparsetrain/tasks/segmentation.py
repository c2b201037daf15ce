"""Segmentation: Dice + cross-entropy loss; mean IoU (multi-class), Dice, IoU, pixel accuracy, sensitivity,
specificity in percent.

Conventions:
    num_classes == 1   binary: one logit channel, targets 0/1, prediction = logit > 0, loss = soft Dice + BCE.
    num_classes >= 2   multi-class: softmax over the channels, targets 0..K-1, prediction = argmax,
                       loss = soft Dice (mean over the classes 1..K-1) + CE.

Metrics are pixel-level and aggregated over the whole data set (not averaged per image): one confusion matrix of
the test set's pixels (rows: target class, columns: predicted class).

The primary metric (`metric`, what pruning selection, sweeps, the chance check and the table compare):
    K >= 3 logit channels  `miou`, the mean IoU of the VOC / Cityscapes protocol: per class c,
                           IoU_c = TP_c / (TP_c + FP_c + FN_c) from the whole test set's confusion matrix
                           (`per_class_iou`, keyed by class name when the data names its classes, else by index
                           "0", "1", ...), then the mean over the classes whose union TP + FP + FN is non-empty
                           (present in the targets or predicted somewhere), class 0 included: in Cityscapes
                           trainIds class 0 is road, a real class. A class neither in the targets nor predicted has
                           IoU None (null in JSON) and is left out of the mean; a class predicted but absent from the
                           targets has IoU 0 and counts.
    K = 1 or 2             `dice`, the Dice (F1) of the foreground (class 1): the medical standard (DRIVE-style).
`dice`, `iou`, `sensitivity` and `specificity` are micro-averages over the classes 1..K-1 (class 0 taken as
background, left out): TP, FP, FN, TN summed one-vs-rest over those classes before dividing, so large classes
dominate them; for K <= 2 they are the foreground's. They are kept for every K; `pixel_accuracy` counts all classes.
A ratio with an empty denominator (e.g. Dice when neither target nor prediction has foreground, mIoU when no pixel
counts) counts as 100 %: nothing was there to get wrong.

The loss (training and the logged `loss`) is the sum of two terms, logged apart as `loss_ce` and `loss_dice`:
the pixel-mean BCE (binary) or CE (multi-class), and 1 − soft Dice (0 for a perfect soft prediction, 1 when no
foreground probability overlaps the foreground). It is not a cross-entropy alone: a model that paints every pixel
background has `loss_dice` ≈ 1 however high its pixel accuracy, so its loss is ≈ 1 + its CE (e.g. 1.77 in a
three-class run at 87.5 % pixel accuracy); the regularizer is not in it (logged as `reg` while training).
Evaluated, each term is taken per evaluation batch (the soft Dice over that batch's pixels) and averaged over
images.

"chance" is the primary metric of the best constant answer (every pixel one class): what a collapsed model scores.
Dice: a model with foreground of share f in binary segmentation scores 2f / (1 + f) by painting everything
foreground (`constant_dice`). mIoU: painting everything class c gives IoU_c = n_c / N and 0 for every other class
present in the targets, so the best is max_c n_c / N over the number of classes present (`constant_miou`).
No margin for luck is added, as for classification: the pixels of an image are not independent samples.

Ignored pixels (`ignore_index`, data.ignore_index: e.g. 255, the void / boundary label of Pascal VOC and Cityscapes)
take no part in anything: the BCE / CE is the mean over the other pixels (torch's `ignore_index`), the soft Dice
leaves them out of both its sums, and the metrics (confusion matrix, pixel accuracy, chance) never see them; what
the model predicts there does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SegmentationTask", "STAT_NAMES", "MIOU_MIN_CLASSES", "constant_dice", "constant_miou", "class_ious",
           "mean_iou"]

STAT_NAMES = ("tp", "fp", "fn", "tn", "correct", "pixels", "loss_sum", "loss_ce_sum", "loss_dice_sum", "images")
MIOU_MIN_CLASSES = 3  # logit channels from which `miou` is the primary metric (fewer: the foreground's Dice)
_DICE_SMOOTH = 1.0  # keeps the soft Dice defined (and its gradient bounded) on batches without foreground


class SegmentationTask:
    """Dice + BCE/CE training; the primary metric in percent: mean IoU for K >= 3 classes, else the foreground's
    Dice (the module docstring).

    Args:
        num_classes: Logit channels of the model (1 = binary).
        ignore_index: Target value of pixels left out of the loss and the metrics (None: every pixel counts).
        class_names: Names in label order (max(num_classes, 2) of them, unique), the keys of `per_class_iou`;
            None (or names that do not fit): the class indices "0", "1", ...
    """

    name = "segmentation"

    def __init__(self, num_classes: int, ignore_index: int | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        classes = max(num_classes, 2)
        names = [str(n) for n in class_names] if class_names is not None else []
        fits = len(names) == classes and len(set(names)) == classes
        self.class_keys = names if fits else [str(c) for c in range(classes)]

    @property
    def uses_miou(self) -> bool:
        """Whether `miou` is the primary metric (K >= `MIOU_MIN_CLASSES` logit channels)."""
        return self.num_classes >= MIOU_MIN_CLASSES

    def _valid(self, targets: torch.Tensor) -> torch.Tensor | None:
        """N × H × W bool, true where the pixel counts; None when every pixel does."""
        return None if self.ignore_index is None else targets != self.ignore_index

    def _check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if outputs.ndim != 4 or outputs.shape[1] != self.num_classes or outputs.shape[2:] != targets.shape[1:]:
            raise ValueError(f"segmentation: outputs {tuple(outputs.shape)} do not fit {self.num_classes} classes "
                             f"and targets {tuple(targets.shape)} (expected N×{self.num_classes}×H×W and N×H×W)")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel-mean BCE (binary) or CE (multi-class) + soft Dice loss (`loss_terms`)."""
        pixel_loss, dice_loss = self.loss_terms(outputs, targets)
        return pixel_loss + dice_loss

    def loss_terms(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss's two terms, scalars: the pixel-mean BCE (binary) or CE (multi-class), and 1 − soft Dice over
        the batch (multi-class: mean over the foreground classes 1..K-1), in [0, 1]."""
        self._check(outputs, targets)
        logits = outputs.float()
        valid = self._valid(targets)
        if valid is not None:  # ignored pixels: target 0 under a zero weight, out of both loss terms
            targets = torch.where(valid, targets, 0)
        weight = None if valid is None else valid[:, None].float()  # N × 1 × H × W
        if self.num_classes == 1:
            probs = torch.sigmoid(logits[:, 0])
            target = targets.float()
            pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
            return _masked_mean(pixel, valid), 1.0 - _soft_dice(probs[:, None], target[:, None], weight)
        probs = torch.softmax(logits, dim=1)
        one_hot = F.one_hot(targets, self.num_classes).permute(0, 3, 1, 2).float()
        pixel = F.cross_entropy(logits, targets, reduction="none")
        return _masked_mean(pixel, valid), 1.0 - _soft_dice(probs[:, 1:], one_hot[:, 1:], weight)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class map N × H × W (int64) from logits."""
        if self.num_classes == 1:
            return (outputs[:, 0] > 0).long()
        return outputs.argmax(dim=1)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sums in the order of `STAT_NAMES`, then per class (max(num_classes, 2) = C of each, in class order) the
        target pixels, the predicted pixels and the correctly predicted pixels (the confusion matrix's row sums,
        column sums and diagonal): a float64 vector of len(STAT_NAMES) + 3 C on the CPU (the `.cpu()` is a device
        sync point)."""
        self._check(outputs, targets)
        pred = self.predict(outputs)
        classes = max(self.num_classes, 2)
        cells = targets * classes + pred
        valid = self._valid(targets)
        # Confusion matrix via bincount: one pass over the pixels for any number of classes.
        confusion = torch.bincount(cells.flatten() if valid is None else cells[valid], minlength=classes**2)
        confusion = confusion.view(classes, classes)
        confusion = confusion.double()
        tp = confusion.diagonal()[1:].sum()
        fp = confusion[:, 1:].sum() - tp
        fn = confusion[1:, :].sum() - tp
        pixels = confusion.sum()
        # One-vs-rest per foreground class: TN_c = pixels - TP_c - FP_c - FN_c, summed over the K-1 classes.
        tn = (classes - 1) * pixels - tp - fp - fn
        correct = confusion.diagonal().sum()
        ce_sum, dice_sum = (term.detach().double() * outputs.shape[0] for term in self.loss_terms(outputs, targets))
        images = torch.tensor(float(outputs.shape[0]), dtype=torch.float64, device=confusion.device)
        # per class: target pixels (rows: targets), predicted pixels (columns), hits; enough for each class's IoU
        per_class = [confusion.sum(dim=1), confusion.sum(dim=0), confusion.diagonal()]
        sums = [tp, fp, fn, tn, correct, pixels, ce_sum + dice_sum, ce_sum, dice_sum, images]
        return torch.cat([torch.stack(sums), *per_class]).cpu()

    def finalize(self, stats: torch.Tensor) -> dict[str, Any]:
        """Metrics in percent from the summed `batch_stats`: for K >= 3 classes `miou` (the "metric") and
        `per_class_iou` ({class name or index: IoU, None where the class is neither in the targets nor predicted});
        for every K the foreground micro-averages `dice` (the "metric" for K <= 2), `iou`, `sensitivity`,
        `specificity`, and `pixel_accuracy`; the chance level of the metric (`constant_miou`, `constant_dice`);
        the mean loss per image and its two terms, `loss_ce` (BCE or CE) and `loss_dice` (1 − soft Dice):
        `loss` = `loss_ce` + `loss_dice` (the module docstring)."""
        s = dict(zip(STAT_NAMES, (float(v) for v in stats[:len(STAT_NAMES)]), strict=True))
        targets, predicted, hits = stats[len(STAT_NAMES):].view(3, -1).tolist()
        tp, fp, fn, tn = s["tp"], s["fp"], s["fn"], s["tn"]
        dice = _percent(2 * tp, 2 * tp + fp + fn)
        results: dict[str, Any] = {"metric": dice}
        if self.uses_miou:
            ious = class_ious(targets, predicted, hits)
            results.update(metric=mean_iou(ious), miou=mean_iou(ious))
        results.update({
            "dice": dice,
            "iou": _percent(tp, tp + fp + fn),
            "pixel_accuracy": _percent(s["correct"], s["pixels"]),
            "sensitivity": _percent(tp, tp + fn),
            "specificity": _percent(tn, tn + fp),
            "loss": s["loss_sum"] / max(s["images"], 1.0),
            "loss_ce": s["loss_ce_sum"] / max(s["images"], 1.0),
            "loss_dice": s["loss_dice_sum"] / max(s["images"], 1.0),
            "chance": constant_miou(targets) if self.uses_miou else constant_dice(targets),
        })
        if self.uses_miou:
            results["per_class_iou"] = dict(zip(self.class_keys, ious, strict=True))
        return results


def constant_dice(per_class: Sequence[float]) -> float:
    """Dice (percent, micro-averaged over the foreground as `finalize`'s) of the best constant answer, for target
    pixels per class [background, class 1, ...].

    Every pixel answered class c >= 1 gives TP = n_c, FP = N - n_c, FN = N - n_0 - n_c: Dice 2 n_c / (2 N - n_0).
    Every pixel background gives Dice 0, or 100 when the targets have no foreground (nothing to get wrong).
    """
    total, background = sum(per_class), per_class[0] if per_class else 0.0
    if total - background <= 0:
        return 100.0
    return max(_percent(2 * n, 2 * total - background) for n in per_class[1:])


def class_ious(targets: Sequence[float], predicted: Sequence[float], hits: Sequence[float]) -> list[float | None]:
    """IoU per class in percent, TP / (TP + FP + FN) = hits / (targets + predicted − hits), from the confusion
    matrix's row sums, column sums and diagonal (pixels per class); None for a class whose union is empty (neither
    in the targets nor predicted)."""
    unions = [t + p - h for t, p, h in zip(targets, predicted, hits, strict=True)]
    return [None if union <= 0 else 100.0 * h / union for h, union in zip(hits, unions, strict=True)]


def mean_iou(ious: Sequence[float | None]) -> float:
    """Mean of the per-class IoUs (percent) over the classes whose union is non-empty (not None); 100 when there is
    none (no pixel counted: nothing to get wrong)."""
    present = [iou for iou in ious if iou is not None]
    return sum(present) / len(present) if present else 100.0


def constant_miou(per_class: Sequence[float]) -> float:
    """mIoU (percent, as `mean_iou`) of the best constant answer, for target pixels per class.

    Every pixel answered class c: IoU_c = n_c / N (no FN, every other pixel a FP), IoU 0 for each other class in the
    targets, and the classes in neither left out; so the best is max_c n_c / N over the P classes in the targets.
    100 when no pixel counts.
    """
    total = sum(per_class)
    present = sum(1 for n in per_class if n > 0)
    return 100.0 if total <= 0 else 100.0 * max(per_class) / total / present


def _masked_mean(pixel: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of the N × H × W per-pixel losses over the `valid` pixels (all when None; 0 when none is valid, as
    torch's ignore_index mean would be NaN)."""
    if valid is None:
        return pixel.mean()
    return (pixel * valid).sum() / valid.sum().clamp_min(1)


def _soft_dice(probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice over the batch and pixels, averaged over channels: N × C × H × W probabilities and targets; `weight`
    N × 1 × H × W (0 at ignored pixels) leaves pixels out of both sums."""
    if weight is not None:
        probs, target = probs * weight, target * weight
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return ((2 * intersection + _DICE_SMOOTH) / (total + _DICE_SMOOTH)).mean()


def _percent(numerator: float, denominator: float) -> float:
    return 100.0 if denominator == 0 else 100.0 * numerator / denominator
