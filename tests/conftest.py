"""Shared pytest fixtures and markers.

Kernel tests run Triton in interpreter mode on CPU; the variable must be set before triton is imported.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
