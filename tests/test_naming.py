"""One name per concept in the public API: the init strategy is ``init``, the fit algorithm ``fit_method``, and
``alpha`` is only Model I's content weight α (query/key input α·x + (1 − α)·P).

Walks every module of the package; for each public function and class defined there, reads the parameters of its
signature (and of its public methods) and its dataclass fields, and fails on a name that other code spells
differently for the same concept. The fit command's argparse destinations are checked the same way.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import impulse_attn

# Names that other code would use for the init strategy ("init") or the fit algorithm ("fit_method").
OTHER_NAMES = {
    "method": "init (an init strategy) or fit_method (a fit algorithm)",
    "init_method": "init",
    "strategy": "init (a parameter holding a registered Strategy object may keep 'strategy')",
    "strategy_name": "init",
    "init_strategy": "init",
    "fit": "fit_method (a fit algorithm) or result (a FitResult)",
    "fit_algorithm": "fit_method",
    "content_alpha": "alpha",
    "beta": "identity_gain (the mimetic init's β)",
}

# Where ``alpha`` may appear: Model I's content weight α, and nowhere else (the mimetic init's α, β are
# ``noise_gain``, ``identity_gain``; an online softmax's factor is ``rescale``).
ALPHA_ALLOWED = {
    "impulse_attn.attention.layers:ImpulseAttention.__init__",
    "impulse_attn.models.simple_vit:SimpleViT.__init__",
    "impulse_attn.fitting.api:fit_impulse",
    "impulse_attn.fitting.spec:FitSpec",
    "impulse_attn.fitting.spec:FitSpec.__init__",
    "impulse_attn.fitting.spec:make_spec",
    "impulse_attn.fitting.report:evaluate_fit",
    "impulse_attn.init.protocol:QKRequest",
    "impulse_attn.init.protocol:QKRequest.__init__",
    "impulse_attn.training.config:TrainConfig",
    "impulse_attn.training.config:TrainConfig.__init__",
}


def _modules():
    yield impulse_attn
    for info in pkgutil.walk_packages(impulse_attn.__path__, "impulse_attn."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        yield importlib.import_module(info.name)


def _params(fn):
    try:
        return inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()


def _names():
    """(where, name, annotation) for every parameter and dataclass field of the public API."""
    for mod in _modules():
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            where = f"{mod.__name__}:{attr}"
            if inspect.isclass(obj):
                if dataclasses.is_dataclass(obj):
                    for f in dataclasses.fields(obj):
                        yield where, f.name, str(f.type)
                for name, member in vars(obj).items():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if (name.startswith("_") and name != "__init__") or not inspect.isfunction(member):
                        continue
                    for p in _params(member):
                        yield f"{where}.{name}", p.name, str(p.annotation)
            elif inspect.isfunction(obj):
                for p in _params(obj):
                    yield where, p.name, str(p.annotation)


def _problems():
    bad = []
    for where, name, annotation in _names():
        if name == "strategy" and "Strategy" in annotation:
            continue                      # a registered Strategy object, not the name of one
        if name in OTHER_NAMES:
            bad.append(f"{where}: {name!r} (use {OTHER_NAMES[name]})")
        elif "alpha" in name and not (name == "alpha" and where in ALPHA_ALLOWED):
            bad.append(f"{where}: {name!r} (alpha is Model I's content weight only)")
    return bad


def test_public_parameters_and_fields_use_one_name_per_concept():
    bad = _problems()
    assert not bad, "names of another concept's spelling:\n" + "\n".join(sorted(set(bad)))


def test_the_alpha_allow_list_has_no_stale_entries():
    seen = {where for where, name, _ in _names() if name == "alpha"}
    assert ALPHA_ALLOWED <= seen, f"allowed but gone: {sorted(ALPHA_ALLOWED - seen)}"


# Constants that keep a Greek letter because it is their own library's name for it: Adam's (β₁, β₂).
CONSTANTS_ALLOWED = {"ADAM_BETAS"}


def test_public_constants_name_their_concept():
    """Choice lists and constants: ``INITS``/``FIT_METHODS``, not ``METHODS``/``FITS``; no ``*_ALPHA``/``*_BETA``
    constant (the mimetic gains are ``*_NOISE_GAIN``/``*_IDENTITY_GAIN``)."""
    bad = []
    for mod in _modules():
        for attr in vars(mod):
            if attr in CONSTANTS_ALLOWED:
                continue
            if attr in ("METHODS", "FITS") or (attr.isupper() and ("ALPHA" in attr or "BETA" in attr)):
                bad.append(f"{mod.__name__}.{attr}")
    assert not bad, sorted(set(bad))


def test_cli_destinations_use_one_name_per_concept():
    import argparse

    from impulse_attn.cli import build_parser
    bad = []
    stack = [("impulse-attn", build_parser())]
    while stack:
        name, parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.items())
            elif action.dest in OTHER_NAMES:
                bad.append(f"{name}: {'/'.join(action.option_strings)} -> args.{action.dest}")
    assert not bad, bad
