"""What a run would do, without running it: model size, pruning plan and per-rank memory plan (`--dry-run`).

The model is built on the meta device (shapes only: a billion-parameter model costs no memory and no time), and
the data is read for its sizes, and refused as the run would refuse it when it is here and bad; only when it is not
on this machine (no `data.path`, or nothing there: a cluster path) do the sizes come from the config (`data.in_chans`,
`data.image_size`, `model.kwargs.num_classes`, else the task's default) and the plan says so.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from sparsetrain.config.schema import RunConfig
from sparsetrain.memory_plan import MemoryPlan, format_memory_plan, plan_memory
from sparsetrain.pruning.criteria import check_layer_settings


@dataclass(frozen=True)
class PrunableLayer:
    """One weight the pruning phase may prune."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class DataSizes:
    in_chans: int
    num_classes: int
    input_shape: tuple[int, ...]
    note: str = ""  # why the sizes come from the config (the data could not be read here), for the plan
    from_config: bool = False  # the config's sizes, which may not be the data's: no check refuses on them alone
    data_classes: int | None = None  # the data's own class count, where known (num_classes: the model's outputs)


# The outputs a model gets when neither the data nor `model.kwargs.num_classes` says: ImageNet's 1000 classes, or
# one logit channel per pixel (binary masks, as `seg_synthetic` and a `seg_folder` of 0/1 masks give).
DEFAULT_CLASSES = {"classification": 1000, "segmentation": 1}


def config_sizes(config: RunConfig) -> DataSizes:
    """The data's sizes as the config gives them, without reading the data: `data.in_chans` (3), `data.image_size`
    (224) and `model.kwargs.num_classes` (else `DEFAULT_CLASSES` of `config.task`: 1000, or 1 for segmentation)."""
    side, chans = config.data.image_size or 224, config.data.in_chans or 3
    default = 21 if config.data.source == "voc" else DEFAULT_CLASSES.get(config.task, 1000)  # VOC's 21 classes
    classes = config.model.kwargs.get("num_classes", default)
    return DataSizes(chans, classes, (chans, side, side), from_config=True)


def _outputs_words(sizes: DataSizes, task: str) -> str:
    """`1000 classes`, or for segmentation `1 output channel (binary masks)` / `3 classes`."""
    if task == "segmentation" and sizes.num_classes == 1:
        return "1 output channel (binary masks; model.kwargs.num_classes=K for K classes)"
    return f"{sizes.num_classes} classes"


def data_sizes(config: RunConfig) -> DataSizes:
    """The data's channels, classes and sample shape; from the config when the data is not on this machine
    (`DataNotFound`) or cannot be read by this user.

    Raises:
        DataError: the one line the run gives for data that is here and bad (e.g. a mask whose size differs from
            its image), so a dry run refuses what the run refuses.
    """
    from sparsetrain.data import DataNotFound, build_data

    try:
        data = build_data(config.data, config.seed, config.model.kwargs.get("num_classes"),
                          config.train.batch_size)
    except (DataNotFound, PermissionError) as err:
        sizes = config_sizes(config)
        return replace(sizes, note=f"warning: data not read here ({err}); sizes from the config: "
                       f"{'×'.join(map(str, sizes.input_shape))} inputs, {_outputs_words(sizes, config.task)}")
    return DataSizes(data.in_chans, data.num_classes, tuple(data.input_shape), data_classes=data.data_classes)


def meta_model(config: RunConfig, sizes: DataSizes) -> nn.Module:
    """The run's model with shapes only (meta device).

    Raises:
        ValueError: one line naming `model.name` (a name timm does not know) or `model.kwargs` (an argument the
            model does not take).
    """
    from sparsetrain.model_imports import import_models
    from sparsetrain.model_names import check_model_name
    from sparsetrain.models.factory import create_model, model_kwargs

    import_models(config.model.imports)
    check_model_name(config.model.name)
    with torch.device("meta"):
        kwargs = model_kwargs(config.model, sizes.in_chans, sizes.num_classes, sizes.input_shape)
        return create_model(config.model.name, config.model.kwargs, **kwargs)


def check_model(config: RunConfig, sizes: DataSizes) -> nn.Module:
    """The run's meta model (`meta_model`), once it is known to take the data's inputs and give the outputs
    `config.task` trains on (`check_model_task`), with a channel score it can compute (`check_channel_score`): the one
    model check of `run`, `run --dry-run` and `config`, before anything is written.

    Raises:
        ValueError: one line naming `model.name`, `model.kwargs` or `prune.channel_score`.
    """
    model = meta_model(config, sizes)
    check_patch_grid(config, model, sizes)
    check_model_task(config, model, sizes)
    check_channel_score(config, model, sizes)
    return model


def check_channel_score(config: RunConfig, model: nn.Module, sizes: DataSizes) -> None:
    """Refuse `prune.channel_score: bn_scale` on a model without a BatchNorm after any prunable layer (e.g. a ViT):
    `pruning.filters.check_channel_score` on the channel groups traced from the meta model. A model the meta
    device cannot trace is judged by whether it has any BatchNorm at all.

    Raises:
        ValueError: one line naming `prune.channel_score`, the model and `l2`.
    """
    if getattr(config.prune, "channel_score", None) != "bn_scale":
        return
    from sparsetrain.pruning.filters import channel_groups
    from sparsetrain.pruning.filters import check_channel_score as check_groups
    from sparsetrain.structural import StructuralPruningError

    try:
        groups = channel_groups(model, sizes.input_shape, config.prune.grouped_conv)
    except (StructuralPruningError, RuntimeError, NotImplementedError):  # an op without a meta kernel
        groups = None
    if groups is not None:
        check_groups(model, groups, config.prune, config.model.name)
    elif not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"prune.channel_score: bn_scale ranks channels by the BatchNorm scale after their filters, "
                         f"but {config.model.name} has no BatchNorm; use prune.channel_score=l2 (or l1)")


RESIZING_SOURCES = ("imagefolder", "seg_folder", "synthetic", "seg_synthetic", "voc")  # data.image_size sets their size


def check_patch_grid(config: RunConfig, model: nn.Module, sizes: DataSizes) -> None:
    """Refuse input sides a patch-embedding model (ViT, DeiT, Swin, ...: timm's `PatchEmbed` as `model.patch_embed`,
    without `dynamic_img_pad`) would cut short: its strided conv floors the grid, so a 30×30 image through 16×16
    patches is seen as its top-left 16×16 only, without an error.

    Raises:
        ValueError: `data.image_size: NAME cuts images into P×P patches, so the sides must be divisible by P; ...`
            for a source that data.image_size resizes (`RESIZING_SOURCES`), else `model.kwargs.patch_size: ...`
            (npz, idx, digits keep their native size); inputs smaller than a patch are left to `check_model_fits`.
    """
    from timm.layers import PatchEmbed

    embed = getattr(model, "patch_embed", None)
    if not isinstance(embed, PatchEmbed) or getattr(embed, "dynamic_img_pad", False) or len(sizes.input_shape) < 3:
        return
    (height, width), (ph, pw) = sizes.input_shape[-2:], tuple(embed.patch_size)
    if height % ph == 0 and width % pw == 0 or height < ph or width < pw:
        return  # smaller than one patch: the forward pass fails, and check_model_fits names it
    patch = f"{ph}×{pw}" if ph != pw else f"{ph}×{ph}"
    seen = f"only the top-left {height // ph * ph}×{width // pw * pw} would be seen"
    common = math.gcd(height, width)
    divisor = max(d for d in range(1, min(ph, pw) + 1) if common % d == 0)
    other_patch = f"model.kwargs.patch_size={divisor}"
    if config.data.source in RESIZING_SOURCES and ph == pw and height == width:
        raise ValueError(f"data.image_size: {config.model.name} cuts images into {patch} patches, so the sides must "
                         f"be divisible by {ph}; got {height}×{width} ({seen}); e.g. data.image_size="
                         f"{max(ph, round(height / ph) * ph)}, or {other_patch}")
    raise ValueError(f"model.kwargs.patch_size: {config.model.name} cuts images into {patch} patches, but the "
                     f"images of data.source={config.data.source} are {height}×{width} ({seen}); give a patch size "
                     f"dividing both sides, e.g. {other_patch}")


def check_start_weights(config: RunConfig, model: nn.Module, data_classes: int | None = None) -> None:
    """Where a run reads its start weights (`Pipeline._check_start_weights` says when), before anything is written:
    `model.checkpoint` fits `model` (the run's meta model) tensor for tensor, from the checkpoint's names and shapes
    alone (`models.checkpoint.check_checkpoint`; `data_classes`, the data's own class count where known, names
    the right fix when `model.kwargs.num_classes` is what differs from the checkpoint), and `model.pretrained_file`
    exists.

    Raises:
        ValueError: the one line the load would give, naming `model.checkpoint`, `model.checkpoint_ema`,
            `model.reset_head` or `model.pretrained_file`.
    """
    from sparsetrain.models.checkpoint import check_checkpoint
    from sparsetrain.models.factory import pretrained_file

    if config.model.checkpoint:
        check_checkpoint(model, config.model, data_classes)
    if config.model.pretrained and config.model.pretrained_file:
        pretrained_file(config.model)


# What a model's outputs are per task: N × K logits per image, N × K × H × W logits per pixel.
TASK_OUTPUTS = {"classification": "one class per image", "segmentation": "a mask per pixel"}


def output_task(output_shape: tuple[int, ...], input_shape: tuple[int, ...]) -> str | None:
    """The task a model's output of `output_shape` (batch first) serves for one sample of `input_shape` (channels
    first): classification for N × K, segmentation for N × K × (the sample's spatial sides); None for anything else."""
    if len(output_shape) == 2:
        return "classification"
    if len(input_shape) >= 3 and len(output_shape) == len(input_shape) + 1:
        return "segmentation"
    return None


def check_model_task(config: RunConfig, model: nn.Module, sizes: DataSizes) -> None:
    """Refuse a model whose outputs do not fit `config.task` (a segmentation model on classification data, or the
    reverse), from one forward pass of the meta `model` on a batch of 2 (shapes only, no memory).

    A meta forward pass that raises is a shape the model does not take, or an op the meta device cannot run: the
    real model then decides (`check_real_model_fits`), unless the sizes come from the config (`config`, a
    `--dry-run` that cannot read the data: they may not be the data's); an op without a meta kernel
    (NotImplementedError) decides nothing here.

    Raises:
        ValueError: `model.name: NAME outputs ... (task) but data.source=S gives ... (task); pick ...`, or
            `model.name: NAME does not accept inputs of shape ...` (`models.factory.check_model_fits`).
    """
    try:
        with torch.no_grad():
            output = model.eval()(torch.empty(2, *sizes.input_shape, device="meta"))
    except NotImplementedError:  # no meta kernel: the real model's check, when the run builds it, names a problem
        return
    except Exception:  # noqa: BLE001  (timm models raise RuntimeError, ValueError, AssertionError on a shape)
        output = None  # the real model decides below, outside this handler (its one line, no chained meta error)
    finally:
        model.train()
    if output is None:
        if not sizes.from_config:
            check_real_model_fits(config, sizes)
        return
    if not isinstance(output, torch.Tensor):
        return
    given = output_task(tuple(output.shape), tuple(sizes.input_shape))
    if given is None or given == config.task:
        return
    raise ValueError(f"model.name: {config.model.name} outputs {TASK_OUTPUTS[given]} ({given}) but data.source="
                     f"{config.data.source} gives {TASK_OUTPUTS[config.task]} ({config.task}); pick "
                     f"{_task_models(config.task)}, or {given} data (data.source={_sources(given)})")


def check_real_model_fits(config: RunConfig, sizes: DataSizes) -> None:
    """`models.factory.check_model_fits` on the run's model built on the CPU, without its pretrained or checkpoint
    weights: the line the run gives when it builds the model, before anything is written. It costs a second build of
    the model, so it runs only where the meta forward pass raised (`check_model_task`); the global RNG is left as
    it was.

    Raises:
        ValueError: `model.name: NAME does not accept inputs of shape ...`.
    """
    from sparsetrain.models.factory import check_model_fits, create_model, model_kwargs

    kwargs = model_kwargs(config.model, sizes.in_chans, sizes.num_classes, sizes.input_shape)
    with torch.random.fork_rng(devices=[]):
        model = create_model(config.model.name, config.model.kwargs, **kwargs)
    check_model_fits(model, config.model.name, sizes.input_shape)


def _sources(task: str) -> str:
    """The `data.source` values of `task`'s data, `|`-separated (segmentation sources: `SEG_SOURCES`)."""
    from typing import get_args

    from sparsetrain.config.schema import SEG_SOURCES, DataConfig

    sources = get_args(DataConfig.model_fields["source"].annotation)
    return "|".join(s for s in sources if (s in SEG_SOURCES) == (task == "segmentation"))


def _task_models(task: str) -> str:
    """What to pick instead for `task`: a classifier, or sparsetrain's segmentation models by name."""
    if task == "classification":
        return "a classifier"
    import timm

    from sparsetrain.models import SEGMENTATION_MODULES

    return f"a segmentation model ({', '.join(timm.list_models(module=list(SEGMENTATION_MODULES)))})"


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The weights the regularizer and pruning act on, as the pipeline defines them (conv/linear kernels)."""
    from sparsetrain.pruning.masks import prunable_parameters

    return [PrunableLayer(name, tuple(param.shape)) for name, param in prunable_parameters(model).items()]


def _grouped(layers: list[PrunableLayer]) -> list[tuple[str, tuple[int, ...], int]]:
    """(name pattern with block indices as '*', shape, count), for models built from repeated blocks."""
    groups: dict[tuple[str, tuple[int, ...]], int] = {}
    for layer in layers:
        key = (re.sub(r"\.\d+\.", ".*.", layer.name), layer.shape)
        groups[key] = groups.get(key, 0) + 1
    return [(name, shape, count) for (name, shape), count in groups.items()]


def format_pruning_plan(layers: list[PrunableLayer], limit: int = 30) -> str:
    """A table of prunable layers with their sizes and the total; repeated blocks are folded into one row each
    (`blocks.*.mlp.fc1.weight ×40`) when there are more than `limit` layers."""
    rows = [(la.name, la.shape, 1) for la in layers] if len(layers) <= limit else _grouped(layers)
    width = max((len(name) + (len(f" ×{n}") if n > 1 else 0) for name, _, n in rows), default=10)
    lines = [f"{'layer':<{width}}  {'shape':<20} {'weights':>13}"]
    for name, shape, count in rows:
        label = f"{name} ×{count}" if count > 1 else name
        lines.append(f"{label:<{width}}  {str(shape):<20} {math.prod(shape) * count:>13,}")
    lines.append(f"{'total':<{width}}  {'':<20} {sum(layer.size for layer in layers):>13,}")
    return "\n".join(lines)


def filter_plan_report(config: RunConfig, model: nn.Module, sizes: DataSizes) -> str:
    """Method 2's filter plan (`pruning.filter_plan`) from the channel groups of the meta model, or a line saying why
    there is none (a model the meta device cannot trace: the prune phase traces a real model)."""
    from sparsetrain.pruning.filter_plan import filter_plan, format_filter_plan
    from sparsetrain.pruning.filters import channel_groups
    from sparsetrain.structural import StructuralPruningError

    try:
        groups = channel_groups(model, sizes.input_shape, config.prune.grouped_conv)
    except (StructuralPruningError, RuntimeError, NotImplementedError) as err:  # an op without a meta kernel
        return f"filter plan: not available before the run ({str(err).splitlines()[0]})"
    return format_filter_plan(filter_plan(groups, config.prune), config.prune, len(groups))


def world_size_for(config: RunConfig) -> int:
    """WORLD_SIZE when launched by torchrun/deepspeed, else the launch section's nodes × tasks_per_node."""
    return int(os.environ.get("WORLD_SIZE", config.launch.world_size))


def run_memory_plan(config: RunConfig, model: nn.Module, sizes: DataSizes, world_size: int) -> MemoryPlan:
    layers = prunable_layers(model)
    return plan_memory(model, sizes.input_shape, world_size=world_size, global_batch=config.train.batch_size,
                       grad_accum=config.deepspeed.gradient_accumulation_steps, zero_stage=config.deepspeed.zero_stage,
                       precision=config.deepspeed.precision, optimizer=config.optim.name,
                       momentum=config.optim.momentum, offload=config.deepspeed.offload_optimizer,
                       checkpointing=config.train.grad_checkpointing, prunable=sum(la.size for la in layers))


def plan_report(config: RunConfig, world_size: int) -> str:
    """Model, pruning plan and memory plan of a run as printed by `--dry-run`.

    Raises:
        InputError: what `run` refuses on `world_size` ranks, e.g. a `train.batch_size` the ranks and micro-steps do
            not divide (`engine.batches.check_batch_split`), a model that does not take the data.
    """
    from sparsetrain.engine.batches import check_batch_split

    check_batch_split(config.train.batch_size, world_size, config.deepspeed.gradient_accumulation_steps)
    sizes = data_sizes(config)
    model = check_model(config, sizes)
    if not sizes.from_config:  # a model sized from the config may not be the run's: its checkpoint is not judged
        check_start_weights(config, model, sizes.data_classes)
    layers = prunable_layers(model)
    check_layer_settings(config.prune, [layer.name for layer in layers])
    parts = [sizes.note] if sizes.note else []
    if config.prune.rule == "filters":
        parts += [f"regularized layers: {len(layers)} (the sparsify phase acts on their weights; the prune phase "
                  f"removes whole filters: the filter plan below)", format_pruning_plan(layers),
                  filter_plan_report(config, model, sizes)]
    else:
        parts += [f"pruning plan: {len(layers)} prunable layers, rule={config.prune.rule}", format_pruning_plan(layers)]
    parts.append(format_memory_plan(run_memory_plan(config, model, sizes, world_size), config.launch.gpu_mem_gb))
    return "\n".join(parts) + "\n"
