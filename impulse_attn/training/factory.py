"""Build the model a ``TrainConfig`` describes, after the checks that need the data's image size.

Three families: the Simple ViT and the ConvMixer of this package, and timm VisionTransformers (``--model
timm:<name>``), made by ``timm.create_model`` and re-initialized by ``impulse_attn.timm.init_``. Under torchrun the
query/key init (the impulse fit) runs on rank 0 only and every rank receives its weights (``build_model_synced``).
``attention_probe`` is what ``inspect`` reads maps through, for either ViT family.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from ..models import ConvMixer, SimpleViT
from .config import (HF_NAMES, TIMM_FAMILIES, _hf_config, _timm, _timm_defaults, check_external_name,
                     check_timm_name, parse_model_kwargs, timm_name)
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


# --- timm and Hugging Face models (their names are checked in config) ---------------------------------------


def timm_kwargs(config, num_classes: int, image_size: int, channels: int) -> dict:
    """timm.create_model keywords of a config: the size flags that were given replace the model's own."""
    c = config.resolved()
    info = check_timm_name(timm_name(c.model))
    kw = dict(pretrained=False, num_classes=num_classes, img_size=image_size, patch_size=c.patch_size,
              in_chans=channels)
    if c.dim is not None:
        kw["embed_dim"] = c.dim
    if info["family"] == "timm_vit":
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
    elif info["family"] == "timm_mixer":
        if c.depth is not None:
            kw["num_blocks"] = c.depth
        if c.mlp_dim is not None:
            kw["mlp_ratio"] = (info["mlp_ratio"][0], c.mlp_dim / (c.dim or info["embed_dim"]))
    else:
        bad = [flag for flag, v in (("--depth", c.depth), ("--num-heads", c.num_heads), ("--mlp-dim", c.mlp_dim))
               if v is not None]
        if bad:
            raise UserError(f"{' '.join(bad)} do not size a Swin Transformer (its depths and heads are per stage)",
                            "pass --model-kwargs 'depths=(2,2);num_heads=(2,4)' instead")
    kw.update(parse_model_kwargs(c.model_kwargs))
    return kw


def _create_timm(c, kw: dict):
    timm = _timm()
    name = timm_name(c.model)
    info = _timm_defaults(name)
    if info["family"] == "timm_mixer":
        # timm's mixer entry points fix patch_size, num_blocks and embed_dim: build the class with the defaults
        # read from the registered model, and the given sizes in their place.
        from timm.models.mlp_mixer import MlpMixer
        args = dict(embed_dim=info["embed_dim"], num_blocks=info["depth"], mlp_ratio=info["mlp_ratio"])
        args.update({k: v for k, v in kw.items() if k != "pretrained"})
        return MlpMixer(**args)
    return timm.create_model(name, **kw)


class HFClassifier(torch.nn.Module):
    """A Hugging Face image classifier whose forward takes images and returns logits, like every other model the
    loop trains; ``hf`` is the transformers model."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=images).logits


def hf_kwargs(config, num_classes: int, image_size: int, channels: int) -> dict:
    c = config.resolved()
    kw = dict(image_size=image_size, patch_size=c.patch_size, num_channels=channels, num_labels=num_classes)
    for key, value in (("hidden_size", c.dim), ("num_hidden_layers", c.depth), ("num_attention_heads", c.num_heads),
                       ("intermediate_size", c.mlp_dim)):
        if value is not None:
            kw[key] = value
    kw.update(parse_model_kwargs(c.model_kwargs))
    return kw


def _init_options(c, family: str) -> Tuple[Optional[str], dict, dict]:
    """fit_method, fit_kwargs and options of ``impulse_attn.init_`` for a timm/hf model of ``family``."""
    if family == "timm_swin":
        return None, {}, ({"target_mass": c.target_mass} if c.target_mass is not None else {})
    if family == "timm_mixer":
        return None, {}, ({"gain": c.mix_gain} if c.mix_gain is not None else {})
    fit_kwargs, options = {}, {}
    if c.init == "impulse" and c.fit_method in ("closed_form", "iterative"):
        fit_kwargs = {k: v for k, v in _fit_kwargs(c).items() if k != "offsets"}  # offsets: the paper's order
        if c.fit_input is not None:
            fit_kwargs["fit_input"] = c.fit_input
        if c.pos_scale is not None:
            fit_kwargs["pos_scale"] = c.pos_scale
        if c.position_share is not None:
            options["position_share"] = c.position_share
    return (c.fit_method if c.init in ("impulse", "mimetic") else None), fit_kwargs, options


def build_external_model(config, num_classes: int, image_size: int, channels: int = 3,
                         fit_kwargs: Optional[dict] = None, qk_init: bool = True,
                         images: Optional[torch.Tensor] = None) -> Tuple[torch.nn.Module, dict]:
    """A timm or Hugging Face model for ``config`` and its init record. The init (``config.init``, seeded by
    ``config.seed``) goes through ``impulse_attn.init_``; ``default`` keeps the model's own init, and
    ``qk_init=False`` skips the init (ranks other than 0 under torchrun)."""
    from ..families import family_of, init_
    c = config.resolved()
    name = timm_name(c.model)
    if c.kind == "timm":
        kw = timm_kwargs(c, num_classes, image_size, channels)
        try:
            model = _create_timm(c, kw)
        except (AssertionError, ValueError, TypeError, RuntimeError) as e:
            shown = {k: v for k, v in kw.items() if k != "pretrained"}
            raise UserError(f"timm could not create {name} with {shown} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]})", "change the size flags") from None
        if c.mlp_dim is not None and hasattr(model, "blocks") and hasattr(model.blocks[0], "mlp") and \
                model.blocks[0].mlp.fc1.out_features != c.mlp_dim:  # pragma: no cover
            raise UserError(f"--mlp-dim {c.mlp_dim} cannot be expressed as a timm mlp_ratio of --dim",
                            "use a multiple of --dim")
        record: dict = {"timm": {"name": name, "kwargs": _plain(kw), "class": f"{type(model).__module__}."
                                 f"{type(model).__name__}"}}
        target = model
    else:
        kw = hf_kwargs(c, num_classes, image_size, channels)
        cfg = _hf_config(name, kw)
        import transformers
        cls = transformers.ViTForImageClassification if cfg.model_type == "vit" else \
            transformers.DeiTForImageClassification
        try:
            target = cls(cfg)
        except (ValueError, TypeError, RuntimeError) as e:
            raise UserError(f"transformers could not create {cls.__name__} with {kw} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]})", "change the size flags") from None
        model = HFClassifier(target)
        record = {"hf": {"name": name, "config": _plain(kw), "class": cls.__name__}}
    family = family_of(target).name
    record["family"] = family
    if qk_init and c.init != "default":
        fit_method, fkw, options = _init_options(c, family)
        if c.init == "impulse" and fit_method == "official":
            init_name, fit_method = "official", None
        else:
            init_name = c.init
        fkw.update(fit_kwargs or {})
        try:
            report = init_(target, init_name, seed=c.seed, kernel_size=c.kernel_size, fit_method=fit_method,
                           fit_kwargs=fkw or None, images=images, **options)
        except (ValueError, TypeError) as e:
            raise UserError(f"impulse_attn.init_ refused {c.model} with --init {c.init}: {str(e).splitlines()[0]}",
                            "change the model, the init or its flags (see docs/families.md)") from None
        record["offsets"] = [None if o is None else o.tolist() for o in report.offsets]
        record["init_report"] = str(report)
        src = report.source
        from ..families.standard_vit import TimmInitReport
        if isinstance(src, TimmInitReport):
            d = src.as_dict()
            record["timm_init"] = _plain({k: v for k, v in d.items() if k not in ("blocks", "fit_report", "offsets")})
        if report.layers and report.layers[0].get("argmax_hit") is not None:
            record["fit"] = {"argmax_hit": report.argmax_hit, "target_mass": report.target_mass,
                             "seconds": report.seconds, "init": f"{family}/{init_name}",
                             "blocks": len(report.layers)}
            if isinstance(src, TimmInitReport):
                record["fit"].update(mse=src.mse, uniform_mse=src.uniform_mse,
                                     fit_method=f"timm/{src.fit_method}",
                                     backend=src.blocks[0].backend if src.blocks else "")
            record["fit_summary"] = (f"{family}/{init_name}, mean over {len(report.layers)} layers: argmax hit "
                                     f"{report.argmax_hit:.3f}, target mass {report.target_mass:.3f}, "
                                     f"{report.seconds:.2f} s")
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
                fit_kwargs: Optional[dict] = None, qk_init: bool = True,
                images: Optional[torch.Tensor] = None) -> Tuple[torch.nn.Module, dict]:
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
        if c.kind in ("timm", "hf"):
            model, extra = build_external_model(c, num_classes, image_size, channels, fit_kwargs, qk_init=qk_init,
                                                images=images)
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
    if images is not None:
        data = prior_on_data(model, images, record)
        if data is not None:
            record["on_data"] = data
    return model, record


def _family_target(model):
    """The module an init family knows (a Hugging Face model inside its classifier wrapper), and its family, or
    (model, None)."""
    from ..families import family_of
    target = model.hf if isinstance(model, HFClassifier) else model
    try:
        return target, family_of(target)
    except TypeError:
        return target, None


def prior_on_data(model: torch.nn.Module, images: torch.Tensor, init: Optional[dict] = None) -> Optional[dict]:
    """The prior on ``images`` at init (``families.on_data``), for any init: per layer the map quality against the
    offsets the init record holds (None for inits without offsets), the position (or Swin bias) share; and its
    mean. None for models without attention or token-mixing maps (the ConvMixer)."""
    from ..families.on_data import summary
    target, fam = _family_target(model)
    if fam is None or fam.on_data is None:
        return None
    if isinstance(model, SimpleViT):
        offsets = [getattr(layer, "impulse_offsets", None) for layer in model.attention_layers()]
    else:
        offsets = [None if o is None else torch.as_tensor(o) for o in (init or {}).get("offsets") or []]
    param = next(target.parameters())
    layers = fam.on_data(target, images.to(device=param.device, dtype=param.dtype), offsets)
    return _plain({"images": int(images.shape[0]), "mean": summary(layers), "layers": layers})


def _layer_state(model) -> Optional[list]:
    """What a Simple ViT's attention layers hold outside their tensors' values: softmax scale, init name, offsets."""
    if not isinstance(model, SimpleViT):
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
@dataclass
class AttentionProbe:
    """How to read a ViT's attention maps: its token grid, the impulse offsets per layer (None where unknown),
    and ``maps(images)``: per layer (B, heads, N, N) over the grid tokens."""
    grid: Tuple[int, int]
    offsets: List[Optional[torch.Tensor]]
    maps: Callable[[torch.Tensor], List[torch.Tensor]]
    family: str
    #: per layer (1, heads, N, N): the maps with no content (the pseudo-input; a Simple ViT's on zero tokens)
    pseudo: Optional[Callable[[], List[torch.Tensor]]] = None


def attention_probe(model: torch.nn.Module, init: Optional[dict] = None) -> AttentionProbe:
    """The probe of any init family's model (``impulse_attn.attention_maps``): a Simple ViT, a timm or Hugging Face
    ViT, a Swin Transformer (the blocks of its first stage, which share the full token grid), an MLP-Mixer (its
    token MLPs' maps per round of shifts). Offsets come from the run's init record. Anything else is a UserError."""
    from ..families import attention_maps, family_of
    if isinstance(model, SimpleViT):
        def zero_tokens():
            z = torch.zeros(1, model.grid_size[0] * model.grid_size[1], model.head.in_features,
                            dtype=model.head.weight.dtype, device=model.head.weight.device)
            return [layer.attention_map(z + model.pos.to(z) if model.add_pos else z)
                    for layer in model.attention_layers()]
        return AttentionProbe(tuple(model.grid_size),
                              [getattr(layer, "impulse_offsets", None) for layer in model.attention_layers()],
                              model.attention_maps, "vit", zero_tokens)
    target = model.hf if isinstance(model, HFClassifier) else model
    try:
        fam = family_of(target)
    except TypeError:
        raise UserError(f"a {type(model).__name__} has no attention maps",
                        "inspect a ViT, Swin or MLP-Mixer run (vit, timm:<name> or hf:<name>)") from None
    offs = (init or {}).get("offsets")
    if fam.name == "timm_swin":
        from ..families import timm_swin
        first = timm_swin.blocks(target)
        grid = tuple(int(r) for r in first[0].input_resolution)
        keep = [i for i, b in enumerate(first) if tuple(int(r) for r in b.input_resolution) == grid]
        offsets = [torch.as_tensor(offs[i]) if offs and offs[i] is not None else None for i in keep]
        return AttentionProbe(grid, offsets, lambda x: [attention_maps(target, x)[i] for i in keep], fam.name,
                              lambda: [attention_maps(target)[i] for i in keep])
    if fam.name == "timm_mixer":
        from ..families.timm_mixer import grid_of
        grid, depth = grid_of(target), len(target.blocks)
    else:
        from ..families import hf_vit, timm_vit
        view = (hf_vit if fam.name == "hf_vit" else timm_vit).view(target, need_pos=False)
        grid, depth = view.grid, view.depth
    offsets = [torch.as_tensor(o) if o is not None else None for o in offs] if offs else [None] * depth
    return AttentionProbe(grid, offsets, lambda x: attention_maps(target, x), fam.name,
                          lambda: attention_maps(target))
