"""Create any model through timm.create_model, adapting it to the data's channels, classes and input size."""

from __future__ import annotations

import inspect

import timm
import torch
from torch import nn

import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)
from sparsetrain.config.schema import ModelConfig


def model_kwargs(cfg: ModelConfig, in_chans: int, num_classes: int, input_shape: tuple[int, ...]) -> dict:
    """Keyword arguments for timm.create_model: data-derived sizes first, then the user's kwargs."""
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    entry = timm.models.model_entrypoint(cfg.name)
    accepts = inspect.signature(entry).parameters
    if cfg.name.startswith("lenet"):
        kwargs["img_size"] = input_shape[-1]
        if cfg.name == "lenet5":
            kwargs["dims"] = len(input_shape) - 1
    elif "img_size" in accepts and len(input_shape) == 3:
        kwargs["img_size"] = input_shape[-1]
    kwargs.update(cfg.kwargs)
    return kwargs


def build_model(cfg: ModelConfig, in_chans: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Create the model and check that it accepts the data's input shape.

    Raises:
        ValueError: one line naming `model.name` when the model is unknown or does not fit the data.
    """
    if not timm.is_model(cfg.name):
        raise ValueError(f"model.name: unknown timm model {cfg.name!r}")
    kwargs = model_kwargs(cfg, in_chans, num_classes, input_shape)
    model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    check_model_fits(model, cfg.name, input_shape)
    return model


def check_model_fits(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
    """Run one tiny forward pass so a shape mismatch fails here with a clear message, not mid-training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ValueError(f"model.name: {name} does not accept inputs of shape {tuple(input_shape)} ({first})") from None
    finally:
        model.train(was_training)
