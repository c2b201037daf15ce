"""sparsetrain: sparsity-inducing training, pruning and fine-tuning on DeepSpeed."""

from __future__ import annotations

__version__ = "0.1.0"


def load_compressed(path: str):
    """Load an exported compressed model (architecture + safetensors weights), ready for `model(x)`."""
    from sparsetrain.structural.export import load_compressed as _load

    return _load(path)


__all__ = ["__version__", "load_compressed"]
