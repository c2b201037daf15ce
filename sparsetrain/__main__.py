"""`python -m sparsetrain ...` (used under torchrun/deepspeed launchers)."""

import sys

from sparsetrain.cli import main

sys.exit(main())
