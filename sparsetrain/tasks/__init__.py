"""Tasks: loss and metrics per problem type."""

from __future__ import annotations

from sparsetrain.tasks.base import Task


def build_task(name: str, num_classes: int) -> Task:
    """Create the task object for `name` ("classification" or "segmentation")."""
    if name == "classification":
        from sparsetrain.tasks.classification import ClassificationTask

        return ClassificationTask(num_classes)
    if name == "segmentation":
        from sparsetrain.tasks.segmentation import SegmentationTask

        return SegmentationTask(num_classes)
    raise ValueError(f"task: unknown task {name!r}, expected classification or segmentation")
