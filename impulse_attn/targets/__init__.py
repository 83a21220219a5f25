"""Positional encodings and impulse targets: what the attention maps are fitted to."""
from .impulse import (TARGET_SHAPES, check_offsets, cycle_offsets, draw_offsets, impulse_targets, kernel_fits_grid,
                      logit_target, separable_logit_target, target_quality, valid_rows)
from .positional import sincos_2d

__all__ = ["sincos_2d", "draw_offsets", "cycle_offsets", "check_offsets", "impulse_targets", "valid_rows",
           "separable_logit_target", "logit_target", "TARGET_SHAPES",
           "kernel_fits_grid", "target_quality"]
