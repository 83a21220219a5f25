"""Build the model a ``TrainConfig`` describes, after the checks that need the data's image size."""
from __future__ import annotations

import time
from typing import Optional, Tuple

import torch

from ..models import ConvMixer, SimpleViT
from .errors import UserError


def check_geometry(config, image_size: int) -> int:
    """The token grid side for this image size, or a UserError naming the mismatch and the fix."""
    p = config.patch_size
    if image_size % p:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0 and d <= 8]
        raise UserError(f"image size {image_size} is not divisible by patch size {p}",
                        f"use --patch-size in {divisors} or an --image-size that is a multiple of {p}")
    grid = image_size // p
    k = config.resolved().kernel_size
    if config.model == "vit" and k > 2 * grid - 1:
        raise UserError(f"--kernel-size {k} is wider than a {grid}x{grid} token grid allows (an offset must stay "
                        f"inside the grid)", f"use --kernel-size {2 * grid - 1 if grid > 1 else 1} or less")
    if config.grid is not None and config.grid != grid:
        want = config.grid
        hint = (f"--patch-size {image_size // want}" if image_size % want == 0 else
                f"--image-size {want * p}")
        raise UserError(f"--grid {want} does not match the model: {image_size}x{image_size} images in patches of "
                        f"{p} give a {grid}x{grid} grid", f"use {hint}, or drop --grid")
    return grid


def check_attention_backend(backend: str, device: torch.device) -> None:
    """An explicitly requested attention backend that cannot run on ``device`` is refused before any work."""
    if backend in ("auto", "reference", "sdpa"):
        return
    from ..attention.backends import triton_unavailable_reason
    probe = torch.zeros(1, 1, 1, 16, device=device)
    why = triton_unavailable_reason(probe, probe, probe)
    if why is not None:
        raise UserError(f"--attention-backend {backend} cannot run on {device}: {why}",
                        "use --attention-backend auto (it picks the fastest backend that runs here)")


def build_model(config, num_classes: int, image_size: int, channels: int = 3,
                fit_kwargs: Optional[dict] = None) -> Tuple[torch.nn.Module, dict]:
    """The model and an ``init`` record: init seconds, and for impulse init the fit report.

    Model parameters are drawn from the global torch RNG (seed it first); the query/key init from
    ``config.seed``.
    """
    c = config.resolved()
    check_geometry(c, image_size)
    start = time.perf_counter()
    try:
        if c.model == "vit":
            kwargs = dict(fit_kwargs or {})
            if c.init == "impulse":
                if c.fit_method == "closed_form":
                    kwargs.setdefault("target_mass", c.target_mass)
                    kwargs.setdefault("target", c.fit_target)
                else:
                    kwargs.setdefault("steps", c.fit_steps)
                    kwargs.setdefault("backend", c.fit_backend)
            model = SimpleViT(image_size=image_size, patch_size=c.patch_size, num_classes=num_classes, dim=c.dim,
                              depth=c.depth, num_heads=c.num_heads, head_dim=c.head_dim, mlp_dim=c.mlp_dim,
                              channels=channels, attention=c.attention, mode=c.mode, alpha=c.alpha, init=c.init,
                              kernel_size=c.kernel_size, scale=c.scale, fit_method=c.fit_method,
                              fit_kwargs=kwargs or None, seed=c.seed, attention_backend=c.attention_backend)
        else:
            model = ConvMixer(image_size=image_size, patch_size=c.patch_size, num_classes=num_classes, dim=c.dim,
                              depth=c.depth, kernel_size=c.kernel_size, channels=channels, filters=c.filters,
                              freeze=c.freeze, box_n=c.box_n, seed=c.seed)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid model settings: {e}", "change the flag it names (see impulse-attn train --help)"
                        ) from None
    seconds = time.perf_counter() - start
    record = {"init_seconds": seconds,
              "parameters": sum(p.numel() for p in model.parameters()),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    fits = getattr(model, "fit_results", None)
    if fits:
        record["fit"] = {k: v for k, v in fits[0].report.as_dict().items() if k != "extra"}
        record["fit_summary"] = str(fits[0].report)
    return model, record
