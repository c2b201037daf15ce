"""Write a DeepSpeed ZeRO checkpoint of LeNet-300-100 as a user's own DeepSpeed training does, with a real engine.

`python -m tests.helpers.zero_checkpoint STATE OUT STAGE [TAG]`: loads the training checkpoint STATE (`state_dict`;
`-`: fresh weights), wraps the model in a one-rank (gloo) DeepSpeed engine at ZeRO stage STAGE and saves
`OUT/TAG/` (default `global_step1`: every rank's model states and optimizer partitions), `OUT/latest` and
DeepSpeed's `zero_to_fp32.py` / `zero_to_torch.py`. No step is taken, so the checkpoint's fp32 weights are STATE's.
"""

from __future__ import annotations

import sys

import deepspeed
import timm
import torch

import sparsetrain.models  # noqa: F401  (registers lenet300_100)
from sparsetrain.engine.distributed import init_distributed


def main(state_file: str, out: str, stage: int, tag: str = "global_step1") -> None:
    init_distributed("cpu", "gloo")
    model = timm.create_model("lenet300_100", num_classes=10, in_chans=1, img_size=8)
    if state_file != "-":
        model.load_state_dict(torch.load(state_file, weights_only=True)["state_dict"])
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                                      config={"train_micro_batch_size_per_gpu": 8,
                                              "zero_optimization": {"stage": stage}})
    engine.save_checkpoint(out, tag=tag)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
