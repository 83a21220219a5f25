"""Kernel-vs-reference parity on the real loop: a few Adam steps of a tiny SimpleViT with attention backend "triton"
(interpreted on the CPU, compiled on a GPU) and "reference" give the same losses step by step.

Precision: float64 where the kernel supports it (the Triton interpreter on the CPU), so the two backends differ
only by float64 rounding, whatever vector or BLAS path the CPU takes:
- losses within 1e-10 relative at every step;
- every parameter after the steps within 1e-8 of its largest entry. Adam divides by the root of the second
  moment, which can amplify rounding in entries whose gradient is itself at rounding level, so the parameter bound
  is looser than the losses'; it is still five orders of magnitude below what a wrong backward produces (a δ =
  rowsum(dO∘O) 1% wrong moves the weights by ~5e-2).
On a GPU (float32 only) the same checks run with 2e-6 / 1e-3, the float32 analogue of the above.
"""
import copy
import os

import torch

if not torch.cuda.is_available():  # before triton defines any kernel (tests/conftest.py does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from impulse_attn import SimpleViT  # noqa: E402  (import errors of our own modules fail, never skip)
from impulse_attn.attention import triton_flash as ta  # noqa: E402

DEVICE = "cpu" if ta._INTERPRETER else "cuda"
DTYPE = torch.float64 if ta._INTERPRETER else torch.float32
LOSS_RTOL, PARAM_RTOL = (1e-10, 1e-8) if DTYPE == torch.float64 else (2e-6, 1e-3)


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
                      attention_backend="reference").to(device=DEVICE, dtype=DTYPE)
    twin = copy.deepcopy(model)
    twin.set_attention_backend("triton")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 10, 10, generator=g, dtype=DTYPE).to(DEVICE)
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
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expect), rtol=LOSS_RTOL, atol=0)
    for (name, a), b in zip(twin.named_parameters(), model.parameters()):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= PARAM_RTOL, f"{name}: parameters drifted apart by {rel:.2e} of their scale"
