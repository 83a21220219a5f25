"""Build the model a ``TrainConfig`` describes, after the checks that need the data's image size.

The model's family builds it (``families.family_for_spec``: its ``ModelSource`` reads the flags it takes and
refuses a ``--model-kwargs`` entry that contradicts one); the run's init then goes through ``impulse_attn.init_``
with the settings its strategy takes (``TrainConfig.init_settings``), unless the family's own models take their
init at construction (the Simple ViT). Under torchrun the init runs on rank 0 only and every rank receives its
weights (``build_model_synced``). ``attention_probe`` is what ``inspect`` reads maps through, for any family.
No family is named here.
"""
from __future__ import annotations

import json
import time
from typing import Optional, Tuple

import torch

from .errors import UserError


def check_geometry(config, image_size: int, num_classes: Optional[int] = None, channels: Optional[int] = None
                   ) -> int:
    """The token grid side for this image size, or a UserError naming the mismatch and the fix; then the model's
    family's own checks with the data's sizes (before anything is built)."""
    p = config.patch_size
    if image_size % p:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0 and d <= 8]
        raise UserError(f"image size {image_size} is not divisible by patch size {p}",
                        f"use --patch-size in {divisors} or an --image-size that is a multiple of {p}")
    grid = image_size // p
    resolved = config.resolved()
    k = resolved.kernel_size
    if resolved.family.kinds and resolved.init != "default" and k > 2 * grid - 1:
        raise UserError(f"--kernel-size {k} is wider than a {grid}x{grid} token grid allows (an offset must stay "
                        f"inside the grid)", f"use --kernel-size {2 * grid - 1 if grid > 1 else 1} or less")
    if config.grid is not None and config.grid != grid:
        want = config.grid
        hint = (f"--patch-size {image_size // want}" if image_size % want == 0 else
                f"--image-size {want * p}")
        raise UserError(f"--grid {want} does not match the model: {image_size}x{image_size} images in patches of "
                        f"{p} give a {grid}x{grid} grid", f"use {hint}, or drop --grid")
    resolved.check_model(num_classes, image_size, channels)
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


def _plain(obj):
    """A JSON-plain copy (numbers, strings, lists, dicts): what run.json and a weights-only checkpoint hold."""
    return json.loads(json.dumps(obj, default=str))


def _init_record(report, family) -> dict:
    """What an ``init_`` report puts in the run's record: offsets, the report, the pseudo-input figures."""
    record: dict = {"offsets": [None if o is None else o.tolist() for o in report.offsets],
                    "init_report": str(report)}
    src = report.source
    if hasattr(src, "as_dict") and hasattr(src, "constants"):          # a standard ViT's report
        d = src.as_dict()
        record["timm_init"] = _plain({k: v for k, v in d.items() if k not in ("blocks", "fit_report", "offsets")})
    if report.layers and report.layers[0].get("argmax_hit") is not None:
        record["fit"] = {"argmax_hit": report.argmax_hit, "target_mass": report.target_mass,
                         "seconds": report.seconds, "init": f"{family.name}/{report.init}",
                         "blocks": len(report.layers)}
        if hasattr(src, "mse"):
            record["fit"].update(mse=src.mse, uniform_mse=src.uniform_mse, fit_method=f"timm/{src.fit_method}",
                                 backend=src.blocks[0].backend if src.blocks else "")
        record["fit_summary"] = (f"{family.name}/{report.init}, mean over {len(report.layers)} layers: argmax hit "
                                 f"{report.argmax_hit:.3f}, target mass {report.target_mass:.3f}, "
                                 f"{report.seconds:.2f} s")
    return record


def _apply_init(c, family, model, images) -> dict:
    """``impulse_attn.init_`` with the run's init and the settings its strategy takes here; the record."""
    from ..families import init_
    settings = c.init_settings()
    fit_method = settings.pop("fit_method", None)
    try:
        report = init_(family.source.unwrap(model), c.init, seed=c.seed, kernel_size=c.kernel_size,
                       fit_method=fit_method, images=images, **settings)
    except (ValueError, TypeError) as e:
        raise UserError(f"impulse_attn.init_ refused {c.model} with --init {c.init}: {str(e).splitlines()[0]}",
                        "change the model, the init or its flags (see docs/families.md)") from None
    return _init_record(report, family)


def build_model(config, num_classes: int, image_size: int, channels: int = 3,
                fit_kwargs: Optional[dict] = None, qk_init: bool = True,
                images: Optional[torch.Tensor] = None) -> Tuple[torch.nn.Module, dict]:
    """The model and an ``init`` record: init seconds, the init's report, and with ``images`` the prior on them.

    Model parameters are drawn from the global torch RNG (seed it first); the init from ``config.seed``.
    ``qk_init=False`` leaves the init out: what ranks other than 0 build before they receive rank 0's weights.
    ``fit_kwargs``: settings for the init that override the command line's (a resumed run skips the iterative fit).
    """
    c = config.resolved()
    check_geometry(c, image_size, num_classes, channels)
    family = c.family
    settings = {**c.init_settings(), **(fit_kwargs or {})}
    settings.pop("fit_method", None)
    start = time.perf_counter()
    request = c.build_request(num_classes, image_size, channels, init_settings=settings, qk_init=qk_init)
    try:
        model = family.source.build(request)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid model settings: {str(e).splitlines()[0]}",
                        "change the flag it names (see impulse-attn train --help)") from None
    record: dict = {"model": _plain({"family": family.name, "spec": c.model, "flags": request.flags,
                                     "model_kwargs": request.model_kwargs,
                                     "class": f"{type(model).__module__}.{type(model).__name__}"})}
    if qk_init and c.init != "default" and family.kinds and not family.source.inits_itself:
        record.update(_apply_init(c, family, model, images))
    seconds = time.perf_counter() - start
    record = {"init_seconds": seconds, "parameters": sum(p.numel() for p in model.parameters()),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), **record}
    fits = getattr(model, "fit_results", None)
    if fits:
        record["fit"] = {k: v for k, v in fits[0].report.as_dict().items() if k != "extra"}
        record["fit_summary"] = str(fits[0].report)
    if images is not None:
        data = prior_on_data(model, images, record)
        if data is not None:
            record["on_data"] = data
    return model, record


def _family_target(model):
    """The module an init family knows (inside a classifier wrapper its source builds), and its family, or
    (model, None)."""
    from ..families import families, family_of
    for fam in families():
        if fam.source is not None and fam.source.unwrap is not None:
            try:
                inner = fam.source.unwrap(model)
            except AttributeError:
                continue
            if inner is not model:
                try:
                    return inner, family_of(inner)
                except TypeError:
                    continue
    try:
        return model, family_of(model)
    except TypeError:
        return model, None


def prior_on_data(model: torch.nn.Module, images: torch.Tensor, init: Optional[dict] = None) -> Optional[dict]:
    """The prior on ``images`` at init (``families.on_data``), for any init: per layer the map quality against the
    offsets the init record holds (None for inits without offsets), the position (or Swin bias) share; and its
    mean. None for models without attention or token-mixing maps."""
    from ..families.on_data import summary
    target, fam = _family_target(model)
    if fam is None or fam.on_data is None:
        return None
    offsets = fam.probe_of(target, (init or {}).get("offsets")).offsets if (init or {}).get("offsets") is None \
        else [None if o is None else torch.as_tensor(o) for o in init["offsets"]]
    param = next(target.parameters())
    layers = fam.on_data(target, images.to(device=param.device, dtype=param.dtype), offsets)
    return _plain({"images": int(images.shape[0]), "mean": summary(layers), "layers": layers})


def _layer_state(model) -> Optional[list]:
    """What a model's own attention layers (``attention_layers()``: the Simple ViT's) hold outside their tensors'
    values: softmax scale, init name, offsets."""
    if not callable(getattr(model, "attention_layers", None)):
        return None
    return [{"scale": layer.scale, "init": layer.init, "offsets": getattr(layer, "impulse_offsets", None)}
            for layer in model.attention_layers()]


def build_model_synced(config, num_classes: int, image_size: int, channels: int, dist,
                       fit_kwargs: Optional[dict] = None, device=None,
                       images: Optional[torch.Tensor] = None) -> Tuple[torch.nn.Module, dict]:
    """``build_model`` under torchrun, on ``device``: rank 0 builds the model (the query/key init and impulse fit
    run there only), the other ranks build it without that init and receive every parameter and buffer of rank
    0, and all ranks check that they hold bit-identical weights (SHA-256, recorded as ``weights_sha256``). A
    failure on any rank is raised on every rank. One process: ``build_model``."""
    if not dist.active:
        model, init = build_model(config, num_classes, image_size, channels, fit_kwargs, images=images)
        return (model.to(device) if device is not None else model), init
    c = config.resolved()
    built = {}

    def on_main():
        built["model"], init = build_model(c, num_classes, image_size, channels, fit_kwargs, images=images)
        return init, _layer_state(built["model"])
    init, layers = dist.decide(on_main)
    if dist.is_main:
        dist.agree(lambda: None)  # the round in which the other ranks build theirs
        model = built["model"]
    else:
        model, _ = dist.agree(lambda: build_model(c, num_classes, image_size, channels, fit_kwargs, qk_init=False))
        if layers is not None:  # what the init set outside the tensors: softmax scale, init name, offsets
            model.init = c.init
            for layer, st in zip(model.attention_layers(), layers):
                layer.scale, layer.init = st["scale"], st["init"]
                if st["offsets"] is not None:
                    layer.register_buffer("impulse_offsets", st["offsets"].clone(), persistent=False)
    if device is not None:
        model.to(device)
    dist.broadcast_module_(model)
    init = dict(init, weights_sha256=dist.check_identical(model, "model weights after the init"))
    return model, init


# --- attention maps, for inspect ------------------------------------------------------------------------------
def attention_probe(model: torch.nn.Module, init: Optional[dict] = None):
    """What ``inspect`` reads of any family's model (``families.Probe``): its grid, per-layer offsets (from the run's
    init record, or the model's own), maps on images and with no content. Anything else is a UserError."""
    target, fam = _family_target(model)
    if fam is None or (fam.maps is None and fam.probe is None):
        raise UserError(f"a {type(model).__name__} has no attention maps",
                        "inspect a model with attention or token-mixing maps (see docs/families.md)")
    return fam.probe_of(target, (init or {}).get("offsets"))
