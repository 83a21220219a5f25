"""Build the model a ``TrainConfig`` describes, after the checks that need the data's image size.

Three families: the Simple ViT and the ConvMixer of this package, and timm VisionTransformers (``--model
timm:<name>``), made by ``timm.create_model`` and re-initialized by ``impulse_attn.timm.init_``. Under torchrun the
query/key init (the impulse fit) runs on rank 0 only and every rank receives its weights (``build_model_synced``).
``attention_probe`` is what ``inspect`` reads maps through, for either ViT family.
"""
from __future__ import annotations

import difflib
import functools
import json
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

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
    resolved = config.resolved()
    k = resolved.kernel_size
    if resolved.kind in ("vit", "timm") and k > 2 * grid - 1:
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


def _plain(obj):
    """A JSON-plain copy (numbers, strings, lists, dicts): what run.json and a weights-only checkpoint hold."""
    return json.loads(json.dumps(obj, default=str))


# --- timm models --------------------------------------------------------------------------------------------
def _timm():
    try:
        import timm
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise UserError("--model timm:<name> needs the timm package", "pip install 'timm>=1.0'") from None
    return timm, VisionTransformer


@functools.lru_cache(maxsize=None)
def _timm_defaults(name: str) -> dict:
    """The registered model's class and default sizes, read from a copy built on the meta device (no memory,
    no weights)."""
    timm, vit_cls = _timm()
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - a registered model that cannot be built this way
        return {"error": f"timm could not create {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"}
    out = {"class": f"{type(model).__module__}.{type(model).__name__}", "vit": isinstance(model, vit_cls)}
    if out["vit"]:
        blk = model.blocks[0]
        out.update(embed_dim=int(model.embed_dim), depth=len(model.blocks), num_heads=int(blk.attn.num_heads),
                   mlp_dim=int(blk.mlp.fc1.out_features) if hasattr(blk.mlp, "fc1") else None)
    return out


def check_timm_name(name: str) -> dict:
    """Refuse, before any work, a name timm's registry does not know or that is not a VisionTransformer."""
    timm, _ = _timm()
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(module="vision_transformer"), n=3, cutoff=0.6)
        raise UserError(f"--model timm:{name}: timm has no model {name!r}",
                        f"try {', '.join('timm:' + n for n in near)}" if near else
                        "list them with python -c \"import timm; print(timm.list_models('vit_*'))\"")
    info = _timm_defaults(name)
    if "error" in info:
        raise UserError(f"--model timm:{name}: {info['error']}", "choose another timm VisionTransformer")
    if not info["vit"]:
        raise UserError(f"--model timm:{name} is a {info['class']}, not a timm VisionTransformer",
                        "use a model of timm's vision_transformer family, e.g. timm:vit_tiny_patch16_224")
    return info


def timm_kwargs(config, num_classes: int, image_size: int, channels: int) -> dict:
    """timm.create_model keywords of a config: the size flags that were given replace the model's own."""
    from .config import timm_name
    c = config.resolved()
    info = check_timm_name(timm_name(c.model))
    kw = dict(pretrained=False, num_classes=num_classes, img_size=image_size, patch_size=c.patch_size,
              in_chans=channels)
    if c.dim is not None:
        kw["embed_dim"] = c.dim
    if c.depth is not None:
        kw["depth"] = c.depth
    if c.num_heads is not None:
        kw["num_heads"] = c.num_heads
    if c.mlp_dim is not None:
        width = c.dim if c.dim is not None else info["embed_dim"]
        ratio = c.mlp_dim / width
        if int(width * ratio) != c.mlp_dim:  # timm sizes the MLP as int(dim * mlp_ratio)
            ratio = (c.mlp_dim + 0.5) / width
        kw["mlp_ratio"] = ratio
    if c.init == "default":
        kw["weight_init"] = "reset"  # PyTorch's default init of every layer
    return kw


def _timm_fit_kwargs(c, fit_kwargs: Optional[dict]) -> dict:
    kwargs = dict(fit_kwargs or {})
    if c.fit_method in ("closed_form", "iterative"):
        for key, value in _fit_kwargs(c).items():
            if key != "offsets":  # a timm model's offsets are impulse_attn.timm's (the structured-init order)
                kwargs.setdefault(key, value)
    return kwargs


def build_timm_model(config, num_classes: int, image_size: int, channels: int = 3, fit_kwargs: Optional[dict] = None,
                     qk_init: bool = True) -> Tuple[torch.nn.Module, dict]:
    """A timm VisionTransformer for ``config`` and its init record. ``--init impulse``/``mimetic`` re-initialize
    it in place with ``impulse_attn.timm.init_`` (seeded by ``config.seed``) unless ``qk_init`` is False."""
    from .config import timm_name
    c = config.resolved()
    timm, _ = _timm()
    kw = timm_kwargs(c, num_classes, image_size, channels)
    try:
        model = timm.create_model(timm_name(c.model), **kw)
    except (AssertionError, ValueError, TypeError, RuntimeError) as e:
        shown = {k: v for k, v in kw.items() if k != "pretrained"}
        raise UserError(f"timm could not create {timm_name(c.model)} with {shown} ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})", "change the size flags") from None
    if c.mlp_dim is not None and model.blocks[0].mlp.fc1.out_features != c.mlp_dim:  # pragma: no cover
        raise UserError(f"--mlp-dim {c.mlp_dim} cannot be expressed as a timm mlp_ratio of --dim",
                        "use a multiple of --dim")
    record: dict = {"timm": {"name": timm_name(c.model), "kwargs": _plain({k: v for k, v in kw.items()}),
                             "class": f"{type(model).__module__}.{type(model).__name__}"}}
    if c.init in ("impulse", "mimetic") and qk_init:
        from .. import timm as iat
        fit = c.fit_method if c.init == "impulse" else ("official" if c.fit_method == "official" else "closed_form")
        try:
            report = iat.init_(model, method=c.init, fit=fit, kernel_size=c.kernel_size, seed=c.seed,
                               **(_timm_fit_kwargs(c, fit_kwargs) if c.init == "impulse" else {}))
        except (ValueError, TypeError) as e:
            raise UserError(f"impulse_attn.timm.init_ refused {timm_name(c.model)}: {str(e).splitlines()[0]}",
                            "change the model or its flags (see docs/timm.md)") from None
        d = report.as_dict()
        record["timm_init"] = _plain({k: v for k, v in d.items() if k not in ("blocks", "fit_report", "offsets")})
        if c.init == "impulse":
            record["offsets"] = d["offsets"]
            record["fit"] = {"mse": report.mse, "uniform_mse": report.uniform_mse, "argmax_hit": report.argmax_hit,
                             "target_mass": report.target_mass, "seconds": report.fit_seconds,
                             "method": f"timm/{fit}", "blocks": len(report.blocks),
                             "backend": report.blocks[0].backend if report.blocks else ""}
            record["fit_summary"] = (f"timm/{fit} on LN(pos_embed), mean over {len(report.blocks)} blocks: mse "
                                     f"{report.mse:.5f} (uniform {report.uniform_mse:.5f}), argmax hit "
                                     f"{report.argmax_hit:.3f}, target mass {report.target_mass:.3f}, "
                                     f"{report.fit_seconds:.2f} s")
    return model, record


# --- every family ---------------------------------------------------------------------------------------------
def _fit_kwargs(c) -> dict:
    """fit_impulse arguments from the fit_* fields: the closed form's target and sharpness (None: the model's
    defaults, init.CLOSED_FORM_DEFAULTS), the iterative recipe's steps and backend, and the offsets."""
    if c.fit_method == "closed_form":
        out = {"target": c.fit_target, "target_mass": c.target_mass}
    else:
        out = {"steps": c.fit_steps, "backend": c.fit_backend}
    out["offsets"] = c.fit_offsets
    return {k: v for k, v in out.items() if v is not None}


def build_model(config, num_classes: int, image_size: int, channels: int = 3,
                fit_kwargs: Optional[dict] = None, qk_init: bool = True) -> Tuple[torch.nn.Module, dict]:
    """The model and an ``init`` record: init seconds, and for impulse init the fit report.

    Model parameters are drawn from the global torch RNG (seed it first); the query/key init from
    ``config.seed``. ``qk_init=False`` leaves the query/key init out (no fit): what ranks other than 0 build
    before they receive rank 0's weights.
    """
    c = config.resolved()
    check_geometry(c, image_size)
    start = time.perf_counter()
    extra: dict = {}
    try:
        if c.kind == "timm":
            model, extra = build_timm_model(c, num_classes, image_size, channels, fit_kwargs, qk_init=qk_init)
        elif c.model == "vit":
            kwargs = dict(fit_kwargs or {})
            if c.init == "impulse":
                for key, value in _fit_kwargs(c).items():
                    kwargs.setdefault(key, value)
            init = c.init if qk_init else "default"
            model = SimpleViT(image_size=image_size, num_classes=num_classes, channels=channels, init=init,
                              fit_kwargs=(kwargs or None) if qk_init else None, seed=c.seed,
                              **c.arguments_for(SimpleViT, exclude=("image_size", "init", "seed")))
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
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), **extra}
    fits = getattr(model, "fit_results", None)
    if fits:
        record["fit"] = {k: v for k, v in fits[0].report.as_dict().items() if k != "extra"}
        record["fit_summary"] = str(fits[0].report)
    return model, record


def _layer_state(model) -> Optional[list]:
    """What a Simple ViT's attention layers hold outside their tensors' values: softmax scale, init name, offsets."""
    if not isinstance(model, SimpleViT):
        return None
    return [{"scale": layer.scale, "init": layer.init, "offsets": getattr(layer, "impulse_offsets", None)}
            for layer in model.attention_layers()]


def build_model_synced(config, num_classes: int, image_size: int, channels: int, dist,
                       fit_kwargs: Optional[dict] = None, device=None) -> Tuple[torch.nn.Module, dict]:
    """``build_model`` under torchrun, on ``device``: rank 0 builds the model (the query/key init and impulse fit
    run there only), the other ranks build it without that init and receive every parameter and buffer of rank
    0, and all ranks check that they hold bit-identical weights (SHA-256, recorded as ``weights_sha256``). A
    failure on any rank is raised on every rank. One process: ``build_model``."""
    if not dist.active:
        model, init = build_model(config, num_classes, image_size, channels, fit_kwargs)
        return (model.to(device) if device is not None else model), init
    c = config.resolved()
    built = {}

    def on_main():
        built["model"], init = build_model(c, num_classes, image_size, channels, fit_kwargs)
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
@dataclass
class AttentionProbe:
    """How to read a ViT's attention maps: its token grid, the impulse offsets per layer (None where unknown),
    and ``maps(images)``: per layer (B, heads, N, N) over the grid tokens."""
    grid: Tuple[int, int]
    offsets: List[Optional[torch.Tensor]]
    maps: Callable[[torch.Tensor], List[torch.Tensor]]
    family: str


def attention_probe(model: torch.nn.Module, init: Optional[dict] = None) -> AttentionProbe:
    """The probe of a Simple ViT (its own ``attention_maps``) or a timm ViT (``impulse_attn.timm.attention_maps``;
    offsets from the init record). Anything else is a UserError."""
    if isinstance(model, SimpleViT):
        return AttentionProbe(tuple(model.grid_size),
                              [getattr(layer, "impulse_offsets", None) for layer in model.attention_layers()],
                              model.attention_maps, "vit")
    if type(model).__module__.startswith("timm."):
        from .. import timm as iat
        depth = len(model.blocks)
        offs = (init or {}).get("offsets")
        offsets = [torch.as_tensor(o) for o in offs] if offs else [None] * depth
        return AttentionProbe(tuple(int(g) for g in model.patch_embed.grid_size), offsets,
                              lambda x: iat.attention_maps(model, x), "timm")
    raise UserError(f"a {type(model).__name__} has no attention maps", "inspect a ViT run (vit or timm:<name>)")
