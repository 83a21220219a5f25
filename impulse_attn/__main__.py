"""``python -m impulse_attn ...``: the ``impulse-attn`` command (also under ``torchrun -m impulse_attn ...``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
