"""Peak inference memory (`sparsetrain.deploy.memory`) counts the dense and the compressed model alike: the loaded
weights, workspace and activations, not the transient of reading an export from disk."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from sparsetrain.config.schema import PruneConfig
from sparsetrain.deploy.memory import measure_peak_memory
from sparsetrain.pruning.filters import channel_groups, choose_filters
from sparsetrain.structural import remove_channels
from sparsetrain.structural.serialize import save_pruned_model

KWARGS = {"num_classes": 10, "in_chans": 3}
SPEC = {"runtime": "torch", "shape": [3, 32, 32], "batches": [1], "threads": 1}


def test_an_export_loaded_from_disk_peaks_like_the_same_model_built_in_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", **KWARGS).eval()  # 45 MB of weights: the transient of loading shows
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_pruned_model(model, tmp_path, meta={"model_name": "resnet18", "model_kwargs": KWARGS})
    dense = measure_peak_memory({**SPEC, "kind": "timm", "source": "resnet18", "model_kwargs": KWARGS})
    loaded = measure_peak_memory({**SPEC, "kind": "export", "source": str(tmp_path)})
    assert dense and loaded, "the measuring child process failed"
    gap = abs(loaded[1] - dense[1])  # the same architecture and dense storage: the same inference memory
    assert gap < 0.15 * weight_bytes, (f"peak MB dense {dense[1] / 2**20:.1f} vs loaded from the export "
                                       f"{loaded[1] / 2**20:.1f}: loading counted as inference?")


def test_a_model_with_fewer_weights_peaks_lower(tmp_path: Path) -> None:
    """The one-time costs of the first load (lazy imports, runtime set-up, heap the loader freed but kept) are not
    counted: LeViT with a quarter of its weights after filter removal peaks lower by about the weights it lost (its
    export is rebuilt from the dense architecture, whose freed heap the old measurement counted)."""
    kwargs, shape = {"num_classes": 10, "in_chans": 3}, (3, 224, 224)
    torch.manual_seed(0)
    dense = timm.create_model("levit_128s", **kwargs).eval()
    groups = channel_groups(dense, shape)
    drop = choose_filters(dense, groups, PruneConfig(rule="filters", filter_fraction=0.5))
    pruned = remove_channels(dense, drop, groups=groups).eval()
    save_pruned_model(pruned, tmp_path, meta={"model_name": "levit_128s", "model_kwargs": kwargs})
    lost = _weight_bytes(dense) - _weight_bytes(pruned)
    spec = {**SPEC, "shape": list(shape)}
    before = measure_peak_memory({**spec, "kind": "timm", "source": "levit_128s", "model_kwargs": kwargs})
    after = measure_peak_memory({**spec, "kind": "export", "source": str(tmp_path)})
    assert before and after, "the measuring child process failed"
    assert before[1] - after[1] > 0.7 * lost, (f"peak MB {before[1] / 2**20:.1f} -> {after[1] / 2**20:.1f} for "
                                               f"{lost / 2**20:.1f} MB fewer weights")


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
