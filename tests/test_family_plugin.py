"""A sixth family is one new file: a toy family defined in a temporary package reaches ``init_``, ``--model`` and
``inspect`` without any other change; no family is named outside ``impulse_attn/families/``; settings reach any
strategy that declares them, on every standard-ViT family."""
from __future__ import annotations

import ast
import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import impulse_attn as ia
from impulse_attn import cli
from impulse_attn.families import families, family_for_spec
from impulse_attn.families.base import unregister_family

PKG = Path(__file__).resolve().parents[1] / "impulse_attn"

TOY = '''
"""A toy family: patch tokens and one standard attention layer of this package, built as --model toy."""
import time

import torch
import torch.nn as nn

from impulse_attn.attention import ViTAttention
from impulse_attn.families.base import Family, InitReport, register_family
from impulse_attn.families.source import ModelSource
from impulse_attn.init import initialize_qk_
from impulse_attn.targets import sincos_2d


class ToyNet(nn.Module):
    def __init__(self, image_size=16, patch_size=4, dim=32, num_classes=2):
        super().__init__()
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.image_size = image_size
        self.embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.register_buffer("pos", sincos_2d(self.grid, dim), persistent=False)
        self.attn = ViTAttention(dim, num_heads=4, head_dim=dim // 4, grid_size=self.grid, init="default")
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x):
        return self.embed(x).flatten(2).transpose(1, 2) + self.pos

    def forward(self, x):
        t = self.tokens(x)
        return self.head((t + self.attn(t)).mean(1))


def apply(model, strategy, kind, *, seed=0, kernel_size=None, fit_method=None, fit_kwargs=None, options=None,
          images=None):
    start = time.perf_counter()
    if kind == "":
        return InitReport("toy net", strategy.name, seed, kind, 0.0)
    res = initialize_qk_([model.attn], strategy.name, seed=seed, fit_method=fit_method,
                         kernel_size=3 if kernel_size is None else kernel_size, fit_kwargs=fit_kwargs)
    offsets = getattr(model.attn, "impulse_offsets", None)
    return InitReport("toy net", strategy.name, seed, kind, time.perf_counter() - start, [{"offsets": offsets}], res)


def maps(model, images=None):
    t = model.tokens(images) if images is not None else model.pos[None]
    return [model.attn.attention_map(t)]


def build(r):
    return ToyNet(r.image_size, r.flags["patch_size"], r.flags.get("dim", 32), r.num_classes)


FAMILY = register_family(Family(
    "toy", "toy net", lambda m: isinstance(m, ToyNet), ("qk",), apply, maps,
    input_shape=lambda m: (3, m.image_size, m.image_size), grid_of=lambda m: m.grid,
    source=ModelSource(spec="toy", build=build, flags=("dim", "patch_size", "kernel_size"),
                       defaults={"kernel_size": 3}, describe="toy: a toy net", examples=("toy",))))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "toyfamilies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toyfamilies.toy")
    yield module
    unregister_family("toy")
    sys.modules.pop("toyfamilies.toy", None)
    sys.modules.pop("toyfamilies", None)


def test_a_sixth_family_from_one_file_reaches_init_model_and_inspect(toy, tmp_path, capsys):
    torch.manual_seed(0)
    model = toy.ToyNet()
    report = ia.init_(model, "impulse", seed=1, images=torch.randn(2, 3, 16, 16))
    assert report.family == "toy net" and report.layers[0]["offsets"] is not None
    assert family_for_spec("toy")[0].name == "toy"
    assert [m.shape for m in ia.attention_maps(model, torch.randn(2, 3, 16, 16))] == [(2, 4, 16, 16)]
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "synthetic", "--synthetic-train", "20", "--synthetic-test", "10",
                     "--synthetic-classes", "2", "--image-size", "16", "--patch-size", "4", "--model", "toy",
                     "--dim", "32", "--steps", "2", "--batch-size", "10", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init"]["model"]["family"] == "toy" and summary["init"]["offsets"][0] is not None
    assert "on_data" not in summary["init"]          # the toy family measures no prior on data
    assert cli.main(["inspect", str(out), "--images", "4"]) == 0
    assert (out / "inspect.json").is_file()
    # flags the toy family does not read are refused by the table, naming it
    code = cli.main(["train", "--dataset", "synthetic", "--model", "toy", "--num-heads", "2", "--out",
                     str(tmp_path / "r2")])
    assert code == 2 and "--num-heads does not apply to --model toy" in capsys.readouterr().err


def _family_names():
    return {f.name for f in families()}


def test_no_family_is_named_outside_the_families_package():
    names = _family_names()
    found = []
    for path in PKG.rglob("*.py"):
        if "families" in path.relative_to(PKG).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(PKG)}:{node.lineno}: {node.value!r}")
    assert not found, "family names outside impulse_attn/families/:\n" + "\n".join(found)


def test_no_strategy_name_check_dispatches_a_family():
    # the registry does the dispatch: no family file compares a strategy's name
    for path in (PKG / "families").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "strategy.name ==" not in text and "strategy.name in" not in text, path.name
        assert "ENGINE_INITS" not in text, path.name


def _standard_vits():
    import timm
    import transformers
    torch.manual_seed(0)
    out = {"timm_vit": timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=24, patch_size=4,
                                         embed_dim=48, depth=2, num_heads=3, num_classes=3),
           "hf_vit": transformers.ViTForImageClassification(transformers.ViTConfig(
               image_size=24, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
               intermediate_size=96, num_labels=3))}
    try:
        from torchvision.models import VisionTransformer
        out["tv_vit"] = VisionTransformer(image_size=24, patch_size=4, num_layers=2, num_heads=3, hidden_dim=48,
                                          mlp_dim=96, num_classes=3)
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return out


def test_settings_reach_a_strategy_that_declares_them_on_every_standard_vit():
    from impulse_attn.init import Strategy, register_strategy, unregister_strategy
    from impulse_attn.training import TrainConfig
    received = []

    def handler(layers, requests, generator, *, seed, fit_method, kernel_size, fit_kwargs):
        received.append(dict(fit_kwargs))
        return None
    register_strategy(Strategy("declares", "a test strategy", qk=handler,
                               settings={"qk": ("fit_method", "target_mass")}))
    try:
        for name, model in _standard_vits().items():
            received.clear()
            ia.init_(model, "declares", fit_kwargs={"target_mass": 0.25})
            assert received == [{"target_mass": 0.25}], name
        # from the command line: --target-mass reaches it because it declares it; --position-share does not
        cfg = TrainConfig(model="timm:vit_tiny_patch16_224", init="declares", target_mass=0.3, position_share=0.5)
        assert cfg.init_settings() == {"fit_method": "closed_form", "target_mass": 0.3}
        with pytest.warns(UserWarning, match="--position-share does not apply to --init declares"):
            cfg.check()
    finally:
        unregister_strategy("declares")
