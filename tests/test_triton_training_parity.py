"""Kernel-vs-reference parity on the real loop: a few Adam steps of a tiny SimpleViT with attention backend "triton"
(interpreted on the CPU, compiled on a GPU) and "reference" give the same losses step by step.

Tolerances, float32:
- losses within 2e-6 relative at every step (~16 float32 ulps). Per call the backends differ by float32
  reorderings (~1e-7 relative, see test_triton_attention.py); the measured loss differences are below one ulp.
- every parameter after the steps within 1e-3 of its largest entry. Adam divides by the root of the second moment,
  so entries with gradients near zero amplify reordering noise: measured ≤ 2e-5 with the correct kernel. The
  weights are the sensitive check: a backward that gets δ = rowsum(dO∘O) 1% wrong moves them by ~5e-2 while
  moving the losses by only ~2e-6, in this tiny model where attention is a small part of the loss.
"""
import copy
import inspect
import os

import torch

if not torch.cuda.is_available():  # before triton defines any kernel (tests/conftest.py does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

impulse_attn = pytest.importorskip("impulse_attn")
ta = pytest.importorskip("impulse_attn.attention.triton_flash")
SimpleViT = getattr(impulse_attn, "SimpleViT", None)
if SimpleViT is None or "attention_backend" not in inspect.signature(SimpleViT).parameters:
    pytest.skip("impulse_attn.SimpleViT(attention_backend=...) is not there yet", allow_module_level=True)

DEVICE = "cpu" if ta._INTERPRETER else "cuda"


def _losses(model, images, labels, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("depth", [1, 2])
def test_triton_and_reference_train_alike(depth):
    torch.manual_seed(0)
    # 10×10 images, patch 2: N = 25 tokens, so the kernels' last block is a masked tail.
    model = SimpleViT(image_size=10, patch_size=2, num_classes=3, dim=32, depth=depth, num_heads=2, head_dim=16,
                      mlp_dim=32, attention="impulse", mode="I", init="random",
                      attention_backend="reference").to(DEVICE)
    twin = copy.deepcopy(model)
    twin.set_attention_backend("triton")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 10, 10, generator=g).to(DEVICE)
    labels = torch.randint(0, 3, (6,), generator=g).to(DEVICE)

    calls = []
    real = ta.flash_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ta, "flash_attention", counted)
        got = _losses(twin, images, labels, steps=3)
    assert len(calls) == 3 * depth, "the 'triton' backend did not reach the kernel once per layer and step"
    expect = _losses(model, images, labels, steps=3)
    assert expect[-1] < expect[0], "the loop does not train, so the comparison would say little"
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expect), rtol=2e-6, atol=0)
    for (name, a), b in zip(twin.named_parameters(), model.parameters()):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-3, f"{name}: parameters drifted apart by {rel:.2e} of their scale"
