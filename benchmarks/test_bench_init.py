"""What the calibration and the on-data report add to ``impulse_attn.init_`` for the family grid's standard ViTs
(8×8 tokens, depth 4, 4 heads, width 64 and 128): the calibrated default with 256 training images
(``init_(model, "impulse", images=x)``: the fit, the position calibration on the first 64 images, and the
per-layer report on all 256) against the same fit with the paper's fixed position scale and no images
(``fit_kwargs={"pos_scale": 18}``), timed alternately in one process. Goal: at most 1 s added on this CPU.

Floor: each calibration round and the report are one forward pass of the model over their images. At width 64 a
forward is ≈ 21 MFLOP per image (4 blocks: qkv, 65² logits, projection, MLP), so 64 images ≈ 1.4 GFLOP per round
and 256 images ≈ 5.4 GFLOP for the report; at width 128 four times that. At the 50-100 GFLOP/s two cores give to
such small matrices, that is about 0.1-0.2 s at width 64 and 0.4-0.8 s at width 128 for the report and three
rounds.

Run: ``pytest benchmarks/test_bench_init.py --benchmark-only -s``.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import impulse_attn as ia

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini" / "train"
ROUNDS = 5


def _images(n: int = 256) -> torch.Tensor:
    if DATA.is_dir():
        from PIL import Image
        files = sorted(DATA.glob("*/*.jpg"))[:: max(1, 5000 // n)][:n]
        x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
        return (x.float() / 255 - 0.5) / 0.5
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(family: str, dim: int):
    torch.manual_seed(0)
    if family == "timm":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=dim,
                                 depth=4, num_heads=4, mlp_ratio=2, num_classes=10)
    cfg = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=dim, num_hidden_layers=4,
                                 num_attention_heads=4, intermediate_size=2 * dim, num_labels=10)
    return transformers.ViTForImageClassification(cfg)


@pytest.mark.parametrize("family", ["timm", "hf"])
@pytest.mark.parametrize("dim", [64, 128])
def test_calibration_and_report_overhead(benchmark, family, dim):
    x = _images()
    base, full = [], []
    for _ in range(ROUNDS):                      # alternate, so that load from other processes hits both alike
        for times, kw in ((base, {"fit_kwargs": {"pos_scale": 18}}), (full, {"images": x})):
            model = _model(family, dim)
            start = time.perf_counter()
            ia.init_(model, "impulse", seed=0, **kw)
            times.append(time.perf_counter() - start)
    added = min(full) - min(base)
    benchmark.extra_info.update(baseline_s=min(base), calibrated_s=min(full), added_s=added,
                                ratio=min(full) / min(base), median_added_s=statistics.median(full) -
                                statistics.median(base), images=int(x.shape[0]))
    print(f"\n{family} ViT width {dim}: init_ {min(base):.3f} s (x18, no images) -> {min(full):.3f} s (calibrated, "
          f"{x.shape[0]} images): +{added:.3f} s, ratio {min(full) / min(base):.2f} (fastest of {ROUNDS}; "
          f"medians +{statistics.median(full) - statistics.median(base):.3f} s)")
    model = _model(family, dim)
    benchmark.pedantic(lambda: ia.init_(model, "impulse", seed=0, images=x), rounds=1, iterations=1)
