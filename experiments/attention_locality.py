"""How local is the attention of our ViTs, at init and after training? (docs/RESULTS.md, "where it helps")

1. At init, on real images: the mean attention mass an impulse-initialized head puts on its target token
   (interior queries), per grid and α. The fit is made on (1 − α)·P; in Model I the content term α·LN(x) adds
   logits the fit never saw, so the real maps are softer than the fitted ones.
2. After training, for every run folder under --runs (a checkpoint.pt): the mean attention distance (tokens,
   attention-weighted, interior queries) and, for impulse runs, the mass still on each head's initial offset.

Usage (repository root): python experiments/attention_locality.py --runs runs/experiments
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from impulse_attn import SimpleViT  # noqa: E402
from impulse_attn.training import TrainConfig, build_datasets, build_model, load_checkpoint  # noqa: E402


def _images(data_dir: str, image_size: int = 32, n: int = 64) -> torch.Tensor:
    d = build_datasets(TrainConfig(dataset="folder", data_dir=data_dir, image_size=image_size))
    step = max(1, len(d.test) // n)
    return torch.stack([d.test[i][0] for i in range(0, step * n, step)])


def _interior(grid: int, margin: int = 2) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    keep = (r >= margin) & (r < grid - margin) & (c >= margin) & (c < grid - margin)
    return keep.flatten().nonzero().squeeze(1)


@torch.no_grad()
def locality(model: SimpleViT, x: torch.Tensor) -> dict:
    g = model.grid_size[0]
    rows = torch.arange(g).repeat_interleave(g).float()
    cols = torch.arange(g).repeat(g).float()
    dist = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).sqrt()   # (N, N) in tokens
    q = _interior(g)
    masses, dists = [], []
    for layer, maps in zip(model.attention_layers(), model.attention_maps(x)):
        m = maps[:, :, q]                                                               # (B, H, Q, N)
        dists.append(float((m * dist[q]).sum(-1).mean()))
        offs = getattr(layer, "impulse_offsets", None)
        if offs is not None:
            target = ((rows[q][None] + offs[:, 0:1]) * g + cols[q][None] + offs[:, 1:2]).long()  # (H, Q)
            masses.append(float(m.gather(-1, target[None, :, :, None].expand(m.shape[0], -1, -1, 1)).mean()))
    return {"distance": sum(dists) / len(dists), "mass": sum(masses) / len(masses) if masses else None}


def init_table(data_dir: str) -> None:
    x = _images(data_dir)
    print("| grid | α | fitted mass (on (1−α)P) | mass on real images, layer 1 / 2 | mean attention distance |")
    print("| --- | --- | --- | --- | --- |")
    for patch in (2, 4):
        for alpha in (0.0, 0.1, 0.2, 0.3, 0.5):
            torch.manual_seed(0)
            m = SimpleViT(patch_size=patch, dim=64, depth=2, num_heads=8, head_dim=16, mlp_dim=128, alpha=alpha)
            per_layer = [locality_single(m, x, i) for i in range(2)]
            loc = locality(m, x)
            print(f"| {m.grid_size[0]}x{m.grid_size[1]} | {alpha} | {m.fit_results[0].report.target_mass:.2f} | "
                  f"{per_layer[0]:.3f} / {per_layer[1]:.3f} | {loc['distance']:.2f} |")


@torch.no_grad()
def locality_single(model: SimpleViT, x: torch.Tensor, layer_index: int) -> float:
    g = model.grid_size[0]
    q = _interior(g)
    rows = torch.arange(g).repeat_interleave(g)
    cols = torch.arange(g).repeat(g)
    layer = model.attention_layers()[layer_index]
    maps = model.attention_maps(x)[layer_index][:, :, q]
    offs = layer.impulse_offsets
    target = ((rows[q][None] + offs[:, 0:1]) * g + cols[q][None] + offs[:, 1:2]).long()
    return float(maps.gather(-1, target[None, :, :, None].expand(maps.shape[0], -1, -1, 1)).mean())


def trained_table(runs: Path, data_dir: str) -> None:
    print("| run | init | grid | mean attention distance at init | after training | "
          "impulse mass at init | after training |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    x = _images(data_dir)
    for ckpt in sorted(runs.glob("**/checkpoint.pt")):
        state = load_checkpoint(ckpt)
        cfg = TrainConfig.from_dict(state["config"])
        if cfg.model != "vit":
            continue
        torch.manual_seed(cfg.seed)
        model, _ = build_model(cfg, 10, 32)
        before = locality(model, x)
        model.load_state_dict(state["model"])
        after = locality(model, x)
        fmt = (lambda v: "—" if v is None else f"{v:.3f}")
        print(f"| {ckpt.parent.relative_to(runs)} (epoch {state['epoch']}) | {cfg.init} | "
              f"{model.grid_size[0]}x{model.grid_size[1]} | {before['distance']:.2f} | {after['distance']:.2f} | "
              f"{fmt(before['mass'])} | {fmt(after['mass'])} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/experiments", help="folder searched for run checkpoints")
    p.add_argument("--data-dir", default="../shared/data/cifar10-mini", help="image-folder dataset")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("## Impulse maps at init on real images (ViT 64x2, 8 heads of 16)\n")
    init_table(args.data_dir)
    if Path(args.runs).is_dir():
        print("\n## Attention locality after training\n")
        trained_table(Path(args.runs), args.data_dir)


if __name__ == "__main__":
    main()
