"""Peak inference memory (`sparsetrain.deploy.memory`) counts the dense and the compressed model alike: the loaded
weights, workspace and activations, not the transient of reading an export from disk."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from sparsetrain.deploy.memory import measure_peak_memory
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
