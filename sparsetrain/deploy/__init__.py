"""Deployment: the export folder of a run, its formats, their verification, loading, evaluation and latency.

Vocabulary (one meaning each):
    export             the folder `out_dir/export/` holding the run's final model in several formats, listed in
                       `manifest.json` (`folder.py`); `sparsetrain export RUN_DIR` rewrites it.
    compressed model   the final model of a run: pruned (exact zeros, Method 1) or with filters removed (a
                       physically smaller dense model, Method 2). `sparsetrain.load_compressed` loads it from any
                       format of the export (`loading.py`).
    formats            `safetensors` (architecture.json + model.safetensors: dense tensors, shrunk modules),
                       `bitmask` (model.bitmask.safetensors: packed mask + non-zero values, `bitmask.py`),
                       `torch_export` (model.pt2) and `onnx` (model.onnx), both from one torch.export program
                       (`program.py`) and verified against torch when written.
    bytes.compressed   in the report (and `sparsetrain eval`): the stored size of the compressed model, the smaller
                       of its two weights files (`bytes.compressed_format`: bitmask for pruned weights,
                       safetensors for a model with filters removed; `bitmask.storage_bytes`).

Modules: `bitmask` (format), `program` (torch.export + ONNX), `folder` (writer), `loading`, `run` (pipeline
glue), `reexport` (`sparsetrain export`), `evaluate` (`sparsetrain eval`), `latency` (`sparsetrain bench latency`).
"""
