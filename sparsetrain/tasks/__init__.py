"""Tasks: loss and metrics per problem type."""

from __future__ import annotations

from sparsetrain.tasks.base import Task


def build_task(name: str, num_classes: int, ignore_index: int | None = None) -> Task:
    """Create the task object for `name` ("classification" or "segmentation"); `ignore_index` (data.ignore_index):
    the segmentation target value left out of the loss and the metrics."""
    if name == "classification":
        from sparsetrain.tasks.classification import ClassificationTask

        return ClassificationTask(num_classes)
    if name == "segmentation":
        from sparsetrain.tasks.segmentation import SegmentationTask

        return SegmentationTask(num_classes, ignore_index)
    raise ValueError(f"task: unknown task {name!r}, expected classification or segmentation")
