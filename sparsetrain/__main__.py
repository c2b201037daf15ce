"""`python -m sparsetrain ...` (used under torchrun/deepspeed launchers)."""

from sparsetrain.cli import entry

entry()
