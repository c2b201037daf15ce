"""`--dry-run`: validate the config, show the sbatch script, the world size and the pruning plan; submit nothing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from launch.submit import sbatch_script, validate_launch
from sparsetrain.config.schema import RunConfig


@dataclass(frozen=True)
class PrunableLayer:
    """One weight the pruning phase may prune."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The weights the regularizer and pruning act on, as the pipeline defines them (conv/linear kernels)."""
    from sparsetrain.pruning.masks import prunable_parameters

    return [PrunableLayer(name, tuple(param.shape)) for name, param in prunable_parameters(model).items()]


def build_model_for(config: RunConfig) -> nn.Module:
    """The model the run would train, sized from its data (built-in data sets are generated, not downloaded)."""
    from sparsetrain.data import build_data
    from sparsetrain.models.factory import build_model

    data = build_data(config.data, config.seed, config.model.kwargs.get("num_classes"))
    return build_model(config.model, data.in_chans, data.num_classes, data.input_shape)


def format_plan(layers: list[PrunableLayer]) -> str:
    """A table of prunable layers with their sizes and the total."""
    width = max((len(layer.name) for layer in layers), default=10)
    lines = [f"{'layer':<{width}}  {'shape':<20} {'weights':>10}"]
    lines += [f"{layer.name:<{width}}  {str(layer.shape):<20} {layer.size:>10,}" for layer in layers]
    lines.append(f"{'total':<{width}}  {'':<20} {sum(layer.size for layer in layers):>10,}")
    return "\n".join(lines)


def dry_run_report(config: RunConfig, cluster: str) -> str:
    """Everything `--dry-run` prints: sbatch script (Slurm), world size, pruning plan.

    Raises:
        LaunchError: invalid launch settings (same checks as a real submission).
        ValueError: the model does not fit the data (one line naming `model.name`).
    """
    validate_launch(config, cluster)
    launch = config.launch
    parts = []
    if cluster == "slurm":
        parts += ["# sbatch script", sbatch_script(config).rstrip(), ""]
    parts.append(f"world size: {launch.world_size} (nodes={launch.nodes} × tasks_per_node={launch.tasks_per_node}"
                 f", gpus_per_node={launch.gpus_per_node})")
    layers = prunable_layers(build_model_for(config))
    parts += [f"pruning plan: {len(layers)} prunable layers, rule={config.prune.rule}", format_plan(layers)]
    return "\n".join(parts) + "\n"
