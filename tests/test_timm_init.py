"""impulse_attn.timm on stock timm VisionTransformers: official reproduction, default fit, mimetic, refusals, training.

The reference for fit_method="official" is re-derived here in float64 from the public code (the timm fork's
``post_init_weights('impulse')``, ``impulse_init`` and ``get_ortho_like``), with torch's ``trunc_normal_`` (whose
draws the golden run of that code carries, tests/test_golden.py) on a freshly seeded global torch generator and
numpy's legacy generator: it shares no code with the module.

Error model (u = 2^-24, the unit round-off of float32; models' weights are float32):

* B_h = W_q,hᵀ W_k,h (D×D, what the map depends on when the q/k biases are zero, as in timm's default init).
  - compute_dtype=float64: the module evaluates the formulas in float64 and rounds each weight once, so
    |B − B_ref| ≤ (2u + u²)·|W_q|ᵀ|W_k| elementwise, plus the float64 difference of two SVD routes (≤ 1e-12 of
    max|B_ref|; measured 0.3-0.4 of the whole bound).
  - default (float32, the fork's own operations): the normal equations XᵀX (sums of N terms) and the D-long
    products lose about u·sqrt(size) each, amplified by κ = (σ_1/σ_r)² of X in the rank-r pseudo-inverse:
    ||B − B_ref||_F ≤ 2·u·κ·sqrt(N·D)·||B_ref||_F (measured 0.01-0.05 of this on these and larger models).
* Maps on the pseudo-input X (rows of norm sqrt(D)): softmax is 1/2-Lipschitz from the ∞-norm of the logits to
  each probability (each Jacobian row has absolute sum 2p(1−p) ≤ 1/2), so in float64
  |P − P_ref|_ij ≤ ½·max_j |scale·x_i (B − B_ref) x_jᵀ|; the model's float32 read-out adds at most
  scale·(2γ_D + γ_r + 4u)·(|x_i||W_q|ᵀ)(|W_k||x_j|ᵀ) to each logit (γ_n = n·u/(1 − n·u)).
* Value·projection: the module rounds the fork's float64 L, R once: |W_vᵀ W_projᵀ − A| ≤ (2u + u²)·|L||R|.
"""
import copy
import math

import numpy as np
import pytest
import timm
import torch

import impulse_attn.timm as iat

U = 2.0 ** -24
ORDER = [4, 1, 5, 3, 7, 0, 2, 6, 8]   # impulse_init: k = [4,1,5,3,7,0,2,6,8]

MODELS = {
    "tiny_cls": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4)),
    "small_avg": ("vit_small_patch16_224", dict(img_size=32, patch_size=4, class_token=False, global_pool="avg",
                                                depth=4)),
    "tiny_reg_nonsquare": ("vit_tiny_patch16_224", dict(img_size=(32, 48), patch_size=4, reg_tokens=4, depth=6)),
}


def make(key, seed=0, **extra):
    name, kw = MODELS[key] if key in MODELS else (key, {})
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10, **{**kw, **extra})


def geometry(model):
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    h, w = model.patch_embed.grid_size
    pos_rows = 0 if model.no_embed_class else model.num_prefix_tokens
    return d, heads, d // heads, (h, w), pos_rows


def shift_maps(grid, heads):
    """The fork's target loops: head i, offset from ORDER[i % 9]; query (r, c) -> key (r+m, c+n)."""
    h, w = grid
    weight = torch.zeros(heads, h * w, h * w)
    offs = []
    for i in range(heads):
        m, n = ORDER[i % 9] // 3 - 1, ORDER[i % 9] % 3 - 1
        offs.append((m, n))
        tmp = torch.zeros(w, w)
        for j in range(-min(0, n), w - max(0, n)):
            tmp[j, j + n] = 1
        for j in range(-min(0, m), h - max(0, m)):
            weight[i, j * w:(j + 1) * w, (j + m) * w:(j + m + 1) * w] += tmp
    return weight, offs


def official_reference(model, seed):
    """float64 re-derivation of post_init_weights('impulse') for `model` (state before init), seeds `seed`."""
    d, heads, hd, grid, pos_rows = geometry(model)
    pos = model.pos_embed.detach().clone() * 18.0                   # norm_p, in float32 as the fork
    x = torch.nn.functional.layer_norm(pos[0, pos_rows:].double(), [d]).numpy()   # eps 1e-5, no affine
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    pinv = vh[:hd].T @ np.diag(1 / s[:hd]) @ u[:, :hd].T             # rank-r truncated pseudo-inverse
    kappa = float((s[0] / s[hd - 1]) ** 2)
    target, offs = shift_maps(grid, heads)
    rs = np.random.RandomState(seed)
    bound = 3 ** 0.5 / d ** 0.5
    qk, vproj = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in model.blocks:
            tmp = torch.rand_like(target)
            torch.nn.init.trunc_normal_(tmp, std=0.6)
            w = 1000.0 * target.double().numpy() + 3.0 * tmp.double().numpy() * (target.numpy() == 0)
            per_head = []
            for i in range(heads):
                a = pinv @ w[i] @ pinv.T
                ua, sa, vha = np.linalg.svd(a)
                per_head.append(49.0 * (ua[:, :hd] * sa[:hd]) @ vha[:hd] / sa[:hd].sum())   # norm_q² · A/||A||_*
            qk.append(np.stack(per_head))
            vproj.append(0.4 * rs.uniform(low=-bound, high=bound, size=(d, d)) - 0.4 * np.eye(d))
    return dict(pos=pos, x=torch.from_numpy(x), qk=qk, vproj=vproj, kappa=kappa, offsets=offs)


def head_weights(model, block, h):
    d, heads, hd, _, _ = geometry(model)
    w = model.blocks[block].attn.qkv.weight.detach().double()
    return w[h * hd:(h + 1) * hd], w[d + h * hd:d + (h + 1) * hd]


def gamma(n):
    return n * U / (1 - n * U)


@pytest.mark.parametrize("key", list(MODELS))
def test_official_matches_float64_rederivation(key):
    before = make(key)
    ref = official_reference(before, seed=3)
    d, heads, hd, grid, _ = geometry(before)
    n = grid[0] * grid[1]
    scale = before.blocks[0].attn.scale
    x = ref["x"]
    for dtype in (None, torch.float64):
        model = copy.deepcopy(before)
        report = iat.init_(model, fit_method="official", seed=3, compute_dtype=dtype)
        assert torch.equal(model.pos_embed.detach(), ref["pos"])
        assert report.offsets[0].tolist() == [list(o) for o in ref["offsets"]]
        maps64 = iat.attention_maps(model, dtype=torch.float64)
        maps32 = iat.attention_maps(model)
        for b, blk in enumerate(model.blocks):
            for h in range(heads):
                wq, wk = head_weights(model, b, h)
                got = (wq.T @ wk).numpy()
                want = ref["qk"][b][h]
                if dtype == torch.float64:
                    tol = (2 * U + U * U) * (wq.abs().T @ wk.abs()).numpy() + 1e-12 * np.abs(want).max()
                    assert (np.abs(got - want) <= tol).all(), (b, h, float((np.abs(got - want) / tol).max()))
                else:
                    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
                    assert rel <= 2 * U * ref["kappa"] * math.sqrt(n * d), (b, h, rel)
                # maps: the logit error this B error makes, through the 1/2-Lipschitz softmax
                dz = scale * (x @ torch.from_numpy(got - want) @ x.T).abs()
                want_map = torch.softmax(scale * x @ torch.from_numpy(want) @ x.T, -1)
                tol_map = 0.5 * dz.max(-1, keepdim=True).values * (1 + 1e-6) + 1e-13
                assert ((maps64[b][0, h] - want_map).abs() <= tol_map).all()
                # float32 read-out of the same weights
                s_abs = scale * (x.abs() @ wq.abs().T) @ (wk.abs() @ x.abs().T)
                tol32 = 0.5 * ((2 * gamma(d) + gamma(hd) + 4 * U) * s_abs).max(-1, keepdim=True).values
                assert ((maps32[b][0, h].double() - maps64[b][0, h]).abs() <= tol32).all()
            w = blk.attn.qkv.weight.detach().double()
            wv, wp = w[2 * d:], blk.attn.proj.weight.detach().double()
            a = ref["vproj"][b]
            left, s, vh = np.linalg.svd(a)
            tol = (2 * U + U * U) * (np.abs(left) * np.sqrt(s)) @ (np.sqrt(s)[:, None] * np.abs(vh))
            assert (np.abs((wv.T @ wp.T).numpy() - a) <= tol + 1e-15).all()
        # the official maps are sharp impulses on the pseudo-input
        assert report.argmax_hit > 0.95 and report.target_mass > 0.5


def test_official_block0_maps_on_images_match_reference():
    before = make("tiny_cls")
    ref = official_reference(before, seed=5)
    model = copy.deepcopy(before)
    iat.init_(model, fit_method="official", seed=5, compute_dtype=torch.float64)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = iat.attention_maps(model, images)[0].double()
    # reference block-0 input: patch embedding (+ class token) + 18·pos, then norm1, all in float64
    m64 = copy.deepcopy(before).double()
    with torch.no_grad():
        m64.pos_embed.copy_(ref["pos"].double())
        tokens = m64.norm_pre(m64._pos_embed(m64.patch_embed(images.double())))
        xin = m64.blocks[0].norm1(tokens)
    scale = model.blocks[0].attn.scale
    d, heads, hd, _, p = geometry(model)
    for h in range(heads):
        want_b = torch.from_numpy(ref["qk"][0][h])
        want = torch.softmax(scale * xin @ want_b @ xin.transpose(1, 2), -1)[:, p:, p:]
        wq, wk = head_weights(model, 0, h)
        s_abs = scale * (xin.abs() @ wq.abs().T) @ (wk.abs() @ xin.abs().transpose(1, 2))
        dz = scale * (xin @ (wq.T @ wk - want_b) @ xin.transpose(1, 2)).abs()
        # weight error + the float32 forward (patch conv, LayerNorm, q/k products)
        tol = 0.5 * (dz + (4 * gamma(d) + gamma(48) + gamma(hd) + 6 * U) * s_abs).max(-1, keepdim=True).values
        assert ((got[:, h] - want).abs() <= tol[:, p:]).all()


def test_seed_none_is_the_global_stream_and_int_seed_leaves_it_alone():
    a, b = make("tiny_cls"), make("tiny_cls")
    torch.manual_seed(11)
    np.random.seed(11)
    iat.init_(a, fit_method="official", seed=None)
    after_torch, after_np = torch.get_rng_state(), np.random.get_state()[1].copy()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    iat.init_(b, fit_method="official", seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(11)
    np.random.seed(11)
    assert not torch.equal(after_torch, torch.get_rng_state())          # the fork's draws were consumed
    assert not np.array_equal(after_np, np.random.get_state()[1])


@pytest.mark.parametrize("key", list(MODELS))
def test_default_fit_gives_impulse_maps(key):
    model = make(key)
    report = iat.init_(model)
    assert report.fit_method == "closed_form" and report.init == "impulse"
    d, heads, hd, grid, _ = geometry(model)
    n = grid[0] * grid[1]
    target, offs = shift_maps(grid, heads)
    valid = target.sum(-1) > 0
    maps = iat.attention_maps(model, dtype=torch.float64)
    for b, m in enumerate(maps):
        m = m[0]
        hit = (m.argmax(-1) == target.argmax(-1)) & valid
        assert hit.sum() / valid.sum() > 0.9, b
        mass = (m * target).sum(-1)[valid].mean()
        assert mass > 4.0 / n, b        # uniform puts 1/N on the target (the default fit aims at mass 0.1)
        assert report.blocks[b].argmax_hit == pytest.approx(float(hit.sum() / valid.sum()))
        assert report.blocks[b].target_mass == pytest.approx(float(mass), abs=1e-9)
    # the weights are the fit's Q, K rescaled for timm's softmax scale: the model's maps are the fitted maps
    assert report.mse == pytest.approx(report.fit_report.mse, rel=1e-4)
    assert report.target_mass == pytest.approx(report.fit_report.target_mass, abs=1e-4)
    assert report.offsets.shape == (len(model.blocks), heads, 2)
    assert torch.equal(report.offsets[0], torch.tensor(offs))
    for blk in model.blocks:                                       # q/k biases zeroed, V·Proj = 0.4Z - 0.4I
        assert torch.count_nonzero(blk.attn.qkv.bias[:2 * d]) == 0
        vp = blk.attn.qkv.weight[2 * d:].detach().double().T @ blk.attn.proj.weight.detach().double().T
        assert float(torch.diagonal(vp).mean()) == pytest.approx(-0.4, abs=0.02)


def test_iterative_fit_runs_through_fit_impulse():
    model = make("tiny_cls", depth=2)
    report = iat.init_(model, fit_method="iterative", steps=30, lr=1e-2)
    assert report.fit_report.steps == 30
    assert report.mse == pytest.approx(report.fit_report.mse, rel=1e-4)
    assert report.mse < report.uniform_mse


@pytest.mark.parametrize("orientation", ["closed_form", "official"])
def test_mimetic_sets_qk_to_mimetic_target(orientation):
    model = make("tiny_cls", depth=3)
    pos = model.pos_embed.detach().clone()
    iat.init_(model, "mimetic", fit_method=orientation, seed=4)
    d, heads, hd, _, _ = geometry(model)
    rs = np.random.RandomState(4)
    bound = 3 ** 0.5 / d ** 0.5
    for b, blk in enumerate(model.blocks):
        for h in range(heads):
            a = 0.7 * rs.uniform(low=-bound, high=bound, size=(d, d)) + 0.7 * np.eye(d)
            ua, sa, vha = np.linalg.svd(a)
            want = (ua[:, :hd] * sa[:hd]) @ vha[:hd]                # best rank-r part of 0.7Z + 0.7I
            wq, wk = head_weights(model, b, h)
            got = (wq.T @ wk).numpy()
            tol = (2 * U + U * U) * (wq.abs().T @ wk.abs()).numpy() + 1e-12
            assert (np.abs(got - want) <= tol).all()
        a = 0.4 * rs.uniform(low=-bound, high=bound, size=(d, d)) - 0.4 * np.eye(d)
        wv = blk.attn.qkv.weight[2 * d:].detach().double()
        wp = blk.attn.proj.weight.detach().double()
        if orientation == "official":      # the fork's mimetic branch stores W_v = L, W_proj = R
            ua, sa, vha = np.linalg.svd(a)
            want = ((np.sqrt(sa)[:, None] * vha) @ (ua * np.sqrt(sa))).T    # x -> x (R L)ᵀ
        else:
            want = a
        assert np.abs((wv.T @ wp.T).numpy() - want).max() < 1e-5
    assert torch.equal(model.pos_embed.detach(), pos)               # norm_p = 1


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("model_kwargs, init_kwargs, error, words", [
    (dict(), dict(init="conv"), ValueError, "init"),
    (dict(), dict(fit_method="adam"), ValueError, "fit_method"),
    (dict(), dict(kernel_size=4), ValueError, "odd"),
    (dict(), dict(kernel_size=17), ValueError, "kernel_size"),
    (dict(), dict(seed=1.5), TypeError, "seed"),
    (dict(), dict(seed=None), ValueError, "seed=None"),
    (dict(), dict(fit_method="official", steps=10), ValueError, r"\['steps'\] do not apply"),
    (dict(), dict(qk_scale=7.0), ValueError, "qk_scale"),
    (dict(), dict(compute_dtype=torch.float64), ValueError, "compute_dtype"),
    (dict(), dict(offsets=[[0, 0]] * 3), ValueError, "set by init_"),
    (dict(), dict(target_mass=2.0), ValueError, "target_mass"),
    (dict(), dict(pos_scale=-1.0), ValueError, "pos_scale"),
    (dict(pos_embed="none"), dict(), ValueError, "position embedding"),
    (dict(dynamic_img_size=True), dict(), ValueError, "dynamic_img_size"),
    (dict(qk_norm=True), dict(), ValueError, "qk_norm"),
    (dict(img_size=(16, 24), patch_size=8), dict(fit_method="official", seed=None), ValueError, "rank"),
])
def test_refusals_leave_model_unchanged(model_kwargs, init_kwargs, error, words):
    model = make("tiny_cls", depth=2, **model_kwargs)
    state = _state(model)
    rng = torch.get_rng_state()
    with pytest.raises(error, match=words):
        iat.init_(model, **init_kwargs)
    assert _unchanged(model, state)
    assert torch.equal(torch.get_rng_state(), rng)


def test_refuses_pos_embed_off_grid_and_non_vit():
    model = make("tiny_cls", depth=2)
    with torch.no_grad():
        model.pos_embed = torch.nn.Parameter(torch.randn(1, 50, model.embed_dim) * 0.02)
    state = _state(model)
    with pytest.raises(ValueError, match="does not match the patch grid"):
        iat.init_(model)
    assert _unchanged(model, state)
    with torch.no_grad():
        model = make("tiny_cls", depth=2)
        model.pos_embed.zero_()       # what an uninitialized (torch.empty) pos_embed often holds
    state = _state(model)
    with pytest.raises(ValueError, match="constant over channels"):
        iat.init_(model)
    assert _unchanged(model, state)
    with pytest.raises(TypeError, match="VisionTransformer"):
        iat.init_(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="VisionTransformer"):
        iat.attention_maps(torch.nn.Linear(4, 4))


def test_mimetic_without_pos_embed_and_no_embed_class_impulse():
    model = make("tiny_cls", depth=2, pos_embed="none")
    iat.init_(model, "mimetic")
    model = make("tiny_cls", depth=2, reg_tokens=2, no_embed_class=True)
    report = iat.init_(model, fit_method="official")
    assert report.num_prefix_tokens == 3 and report.argmax_hit > 0.95


@pytest.mark.parametrize("key, init_kwargs", [("tiny_cls", dict()), ("small_avg", dict(fit_method="official")),
                                               ("tiny_reg_nonsquare", dict(init="mimetic"))])
def test_forward_and_one_training_step(key, init_kwargs):
    model = make(key)
    iat.init_(model, **init_kwargs)
    h, w = model.patch_embed.img_size
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, h, w, generator=g), torch.randint(0, 10, (4,), generator=g)
    maps = iat.attention_maps(model, images)
    n = model.patch_embed.num_patches
    assert len(maps) == len(model.blocks) and maps[0].shape == (4, model.blocks[0].attn.num_heads, n, n)
    assert float(maps[0].sum(-1).max()) <= 1 + 1e-5
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_maps_feed_the_package_plots(tmp_path):
    from impulse_attn.plots import plot_fit
    from impulse_attn.targets import impulse_targets
    model = make("tiny_cls", depth=2)
    report = iat.init_(model)
    maps = iat.attention_maps(model)
    offs = report.offsets[0]
    path = plot_fit(maps[0][0], impulse_targets(offs, report.grid), offs, report.grid, tmp_path / "fit.png")
    assert path.exists() and path.stat().st_size > 0
