"""`bitmask.storage_bytes` counts, without writing, what the export writes: the sizes of model.safetensors and
model.bitmask.safetensors for the same weights (`sparsetrain eval` of a checkpoint reports them), and the report's
`export_bytes` reads the same numbers off the files."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import sparsetrain.models  # noqa: F401  (registers lenet300_100)
from sparsetrain.deploy.bitmask import BITMASK_FILE, storage_bytes
from sparsetrain.deploy.folder import write_export
from sparsetrain.measure import export_bytes
from sparsetrain.pruning.masks import prunable_parameters
from sparsetrain.structural.serialize import WEIGHTS_FILE


@pytest.mark.parametrize(("sparsity", "smallest"), [(0.9, "bitmask"), (0.0, "safetensors")])
def test_counted_bytes_are_the_written_files_sizes(tmp_path: Path, sparsity: float, smallest: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("lenet300_100", num_classes=10, in_chans=1, img_size=8).eval()
    with torch.no_grad():
        for weight in prunable_parameters(model).values():
            weight.mul_(torch.rand_like(weight) >= sparsity)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    counted = storage_bytes(state, set(prunable_parameters(model)))
    folder = tmp_path / "export"
    write_export(model, folder, meta={"model_name": "lenet300_100",
                                      "model_kwargs": {"num_classes": 10, "in_chans": 1, "img_size": 8}},
                 example=torch.randn(2, 1, 8, 8), formats=[])
    written = {"safetensors": (folder / WEIGHTS_FILE).stat().st_size, "bitmask": (folder / BITMASK_FILE).stat().st_size}
    assert {fmt: counted[fmt] for fmt in written} == written
    assert counted["compressed_format"] == smallest and counted["compressed"] == written[smallest]
    assert export_bytes(folder) == counted
