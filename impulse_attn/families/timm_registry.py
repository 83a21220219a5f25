"""timm's model registry as the timm families read it: which class a registered name builds, and its own sizes.

The three timm families (ViT, Swin, MLP-Mixer) claim ``--model timm:<name>`` by the class timm builds for the name
(read from a copy built on the meta device: no memory, no weights), and explain in one line why no family takes a
name (unknown to timm, or a class no family handles).
"""
from __future__ import annotations

import difflib
import functools


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("--model timm:<name> needs the timm package (pip install 'timm>=1.0')") from None
    return timm


@functools.lru_cache(maxsize=None)
def describe(name: str) -> dict:
    """{"class": module.Class, "class_name": Class, "model": the meta-device model} or {"error": why}."""
    timm = _timm()
    if not timm.is_model(name):
        return {"error": "unknown"}
    try:
        import torch
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - a registered model that cannot be built this way
        return {"error": f"timm could not create {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"}
    return {"class": f"{type(model).__module__}.{type(model).__name__}", "class_name": type(model).__name__,
            "model": model}


def builds(name: str, matches) -> bool:
    """Whether timm's ``name`` builds a model that ``matches(model)`` (a family's own test)."""
    info = describe(name) if _known(name) else {"error": "unknown"}
    return "model" in info and bool(matches(info["model"]))


def _known(name: str) -> bool:
    return isinstance(name, str) and bool(name) and _timm().is_model(name)


def explain(name: str) -> str:
    """Why no timm family takes ``name``, and what to use."""
    timm = _timm()
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = (f"try {', '.join('timm:' + n for n in near)}" if near else
                "list them with python -c \"import timm; print(timm.list_models('vit_*'))\"")
        return f"--model timm:{name}: timm has no model {name!r} ({hint})"
    info = describe(name)
    if "error" in info:
        return f"--model timm:{name}: {info['error']}"
    blocks = getattr(info["model"], "blocks", None)
    if info["class_name"] == "MlpMixer" and blocks is not None and len(blocks):
        return (f"--model timm:{name} has {type(blocks[0]).__name__} blocks (ResMLP/gMLP), not MixerBlock: its token "
                f"mixing is not an MLP over tokens with one hidden layer (use a timm mixer_* model)")
    return (f"--model timm:{name} is a {info['class']}, which no init family handles (use a timm VisionTransformer, "
            f"SwinTransformer (v1) or MlpMixer with MixerBlocks, e.g. timm:vit_tiny_patch16_224, "
            f"timm:swin_tiny_patch4_window7_224, timm:mixer_s16_224)")


def create(name: str, **kwargs):
    """``timm.create_model(name, pretrained=False, **kwargs)``, its errors as one-line ValueErrors."""
    timm = _timm()
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (AssertionError, ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        raise ValueError(f"timm could not create {name} with {kwargs} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None
