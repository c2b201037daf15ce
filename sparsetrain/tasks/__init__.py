"""Tasks: loss and metrics per problem type."""

from __future__ import annotations

from collections.abc import Sequence

from sparsetrain.tasks.base import Task


def build_task(name: str, num_classes: int, ignore_index: int | None = None,
               class_names: Sequence[str] | None = None) -> Task:
    """Create the task object for `name` ("classification" or "segmentation"); `ignore_index` (data.ignore_index):
    the segmentation target value left out of the loss and the metrics; `class_names` (the data's, in label order):
    the keys of segmentation's `per_class_iou`."""
    if name == "classification":
        from sparsetrain.tasks.classification import ClassificationTask

        return ClassificationTask(num_classes)
    if name == "segmentation":
        from sparsetrain.tasks.segmentation import SegmentationTask

        return SegmentationTask(num_classes, ignore_index, class_names)
    raise ValueError(f"task: unknown task {name!r}, expected classification or segmentation")
