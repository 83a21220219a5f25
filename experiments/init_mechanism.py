"""Why does the published iterative recipe train better than the closed-form fit? Ablations on cifar10-mini val.

Setting (issue 8's held-out setting, here on ../shared/data/cifar10-mini): Simple ViT, 8x8 grid (patch 4), dim 128,
depth 4, 8 heads of 16, MLP 256, mode I with alpha 0.2, AdamW lr 1e-3 wd 0.05, cosine, batch 512, 15 epochs on
500 images per class, no augmentation; accuracy on val/ (10,000 images) after every epoch.

Every variant starts from the same model (global seed) and changes only the query/key weights of the attention
layers and their softmax scale. Variants (``VARIANTS``) decompose the recipe's weights into the parts that can
matter: the positional map (what softmax(s·X Q Kᵀ Xᵀ) looks like on the pseudo-input X), the split of Q Kᵀ into
Q and K (norms, asymmetry), the components outside X's row space (the 'complement', which only the content term
α·LN(x) sees), and the softmax scale.

Usage (repository root): python experiments/init_mechanism.py --variants random recipe closed ... --seeds 0
Results: one JSON line per (variant, seed) appended to runs/mechanism/results.jsonl (reused when present).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import impulse_attn as ia
from impulse_attn.fitting.closed_form import fit_closed_form
from impulse_attn.targets import impulse_targets, sincos_2d, valid_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
MODEL = dict(image_size=32, patch_size=4, dim=128, depth=4, num_heads=8, head_dim=16, mlp_dim=256, alpha=0.2)
GRID = (8, 8)


def load_split(split: str, per_class=None) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.io import decode_jpeg, read_file
    classes = sorted(p.name for p in (DATA / split).iterdir() if p.is_dir())
    xs, ys = [], []
    for c, name in enumerate(classes):
        files = sorted((DATA / split / name).glob("*.jpg"))[:per_class]
        xs += [decode_jpeg(read_file(str(f))) for f in files]
        ys += [c] * len(files)
    x = torch.stack(xs).float().div_(255).sub_(0.5).div_(0.5)
    return x, torch.tensor(ys)


def offsets_logits(offsets: torch.Tensor, grid, kind: str) -> torch.Tensor:
    """Target logits (heads, N, N) of a given shape around each head's offset."""
    h, w = grid
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    m, n = offsets[:, 0, None, None], offsets[:, 1, None, None]
    dr = (rows[None, None, :] - rows[None, :, None] - m).double()
    dc = (cols[None, None, :] - cols[None, :, None] - n).double()
    if kind == "separable":
        return (dr == 0).double() + (dc == 0).double()
    if kind == "laplace":
        return -(dr.abs() + dc.abs())
    if kind == "gauss":
        return -(dr ** 2 + dc ** 2) / 2
    raise ValueError(kind)


def pseudo_input(dim: int) -> torch.Tensor:
    return sincos_2d(GRID, dim) * (1 - MODEL["alpha"])


def closed(offsets, kind="separable", mass=0.3, scale=0.1):
    x = pseudo_input(MODEL["dim"])
    L, H = offsets.shape[:2]
    flat = offsets.reshape(-1, 2)
    logits = offsets_logits(flat, GRID, kind).reshape(L, H, 64, 64)
    t = impulse_targets(flat, GRID).reshape(L, H, 64, 64)
    v = valid_rows(flat, GRID).reshape(L, H, 64)
    q, k, _ = fit_closed_form(x, logits, t, v, MODEL["head_dim"], scale=scale, target_mass=mass)
    return q, k, scale


def recipe(offsets, seed):
    f = ia.fit_impulse(MODEL["num_heads"], GRID, 5, MODEL["dim"], MODEL["head_dim"], fit_method="iterative", layers=4,
                       offsets=offsets, scale="auto", alpha=MODEL["alpha"], backend="auto", seed=seed, warn=False)
    return f.q, f.k, f.scale


def row_space(dim: int, rtol=1e-6) -> torch.Tensor:
    """Orthonormal basis (D, k) of the pseudo-input's row space."""
    _, s, vh = torch.linalg.svd(pseudo_input(dim).double(), full_matrices=False)
    return vh[s > rtol * s[0]].T


def project(q, k, keep="row"):
    v = row_space(q.shape[-2])
    p = v @ v.T
    if keep == "row":
        return (p @ q.double()).float(), (p @ k.double()).float()
    eye = torch.eye(p.shape[0], dtype=torch.float64)
    return ((eye - p) @ q.double()).float(), ((eye - p) @ k.double()).float()


def resplit(q, k):
    """Same bilinear form on the row space, split symmetrically by SVD (equal Q and K singular values)."""
    qr, kr = project(q, k, "row")
    a = qr.double() @ kr.double().transpose(-1, -2)
    u, s, vh = torch.linalg.svd(a)
    r = q.shape[-1]
    root = s[..., :r].sqrt()
    return (u[..., :r] * root[..., None, :]).float(), (vh[..., :r, :].transpose(-1, -2) * root[..., None, :]).float()


def add_complement(q, k, gen, bound):
    """Add a random U(±bound) init projected on the complement of the row space."""
    rq = (2 * torch.rand(q.shape, generator=gen, dtype=torch.float64) - 1) * bound
    rk = (2 * torch.rand(k.shape, generator=gen, dtype=torch.float64) - 1) * bound
    cq, ck = project(rq.float(), rk.float(), "complement")
    return q + cq, k + ck


def make_variant(name: str, offsets: torch.Tensor, seed: int):
    """(q, k, scale) for every layer, or None for the random baseline."""
    gen = torch.Generator().manual_seed(seed + 1000)
    recipe_bound = math.sqrt(1 / (MODEL["head_dim"] * MODEL["num_heads"]))
    if name == "random":
        return None
    if name == "recipe":
        return recipe(offsets, seed)
    if name == "recipe-rowspace":                 # recipe without its complement components (asymmetry kept)
        q, k, s = recipe(offsets, seed)
        return (*project(q, k, "row"), s)
    if name == "recipe-resplit":                  # recipe's map, symmetric split, no complement
        q, k, s = recipe(offsets, seed)
        return (*resplit(q, k), s)
    if name == "recipe-resplit-complement":       # recipe's map, symmetric split, random complement
        q, k, s = recipe(offsets, seed)
        return (*add_complement(*resplit(q, k), gen, recipe_bound), s)
    if name.startswith("closed"):                 # closed-<kind>-<mass>-<scale>[-c]
        parts = name.split("-")
        kind, mass, scale = parts[1], float(parts[2]), float(parts[3])
        q, k, s = closed(offsets, kind, mass, scale)
        if parts[-1] == "c":
            q, k = add_complement(q, k, gen, recipe_bound)
        return q, k, s
    raise ValueError(name)


def run(name: str, seed: int, data, epochs=15, batch=512, lr=1e-3, wd=0.05) -> dict:
    (xtr, ytr), (xva, yva) = data
    torch.manual_seed(seed)
    model = ia.SimpleViT(num_classes=10, init="random", seed=seed, attention_backend="sdpa", **MODEL)
    offsets = torch.stack([torch.randint(0, 25, (MODEL["num_heads"],),
                                         generator=torch.Generator().manual_seed(seed * 7 + i))
                           for i in range(MODEL["depth"])])
    offsets = torch.stack((offsets // 5 - 2, offsets % 5 - 2), -1)
    t0 = time.perf_counter()
    v = make_variant(name, offsets, seed)
    init_s = time.perf_counter() - t0
    stats = {}
    if v is not None:
        q, k, s = v
        for i, layer in enumerate(model.attention_layers()):
            layer.load_qk(q[i], k[i])
            layer.scale = s
        stats = {"scale": s, "q_norm": float(q.norm(dim=(-1, -2)).mean()), "k_norm": float(k.norm(dim=(-1, -2)).mean())}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * math.ceil(len(ytr) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    accs = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xva[j:j + 1000]).argmax(-1) == yva[j:j + 1000]).sum())
                          for j in range(0, len(yva), 1000))
        accs.append(correct / len(yva))
    return {"variant": name, "seed": seed, "val_acc": accs, "final": accs[-1], "init_seconds": init_s, **stats}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.add_argument("--out", default="runs/mechanism/results.jsonl")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {(r["variant"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    data = (load_split("train"), load_split("val"))
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in done:
                continue
            t0 = time.perf_counter()
            rec = run(name, seed, data)
            rec["seconds"] = time.perf_counter() - t0
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{name} seed {seed}: " + " ".join(f"{100 * a:.1f}" for a in rec["val_acc"]) +
                  f" ({rec['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
