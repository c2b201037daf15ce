"""sparsetrain: sparsity-inducing training, pruning and fine-tuning on DeepSpeed."""

from __future__ import annotations

__version__ = "0.1.0"


def load_compressed(path, format: str = "auto", **kwargs):
    """Load an exported model from a run directory, its `export/` folder or a file in it, ready for `model(x)`.

    Reads every format an export folder holds (safetensors, bitmask, torch_export `.pt2`, onnx); the returned
    module's `export_format` says which one was loaded. See `sparsetrain.deploy.loading.load_compressed`.
    """
    from sparsetrain.deploy.loading import load_compressed as _load

    return _load(path, format, **kwargs)


__all__ = ["__version__", "load_compressed"]
