import pytest
import torch

from impulse_attn import ConvMixer, SimpleViT
from impulse_attn.models import FILTER_INITS


@pytest.mark.parametrize("attention,mode", [("impulse", "I"), ("impulse", "II"), ("impulse", "III"),
                                            ("plain", "I")])
@pytest.mark.parametrize("init", ["impulse", "mimetic", "random", "default"])
def test_simple_vit_forward_backward(attention, mode, init):
    m = SimpleViT(image_size=(8, 12), patch_size=2, num_classes=5, dim=32, depth=2, num_heads=2, head_dim=16,
                  mlp_dim=48, attention=attention, mode=mode, init=init, kernel_size=3)
    out = m(torch.randn(3, 3, 8, 12))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_mode_ii_is_mode_i_at_alpha_zero():
    # Model II (queries and keys from P) and Model I with X_qk = α·LN(x) + (1 − α)·P at α = 0 are one function of the
    # same parameters: same outputs and gradients in float64 (to rounding, 1e-12), so item 3 runs only one of them.
    kw = dict(image_size=(8, 12), patch_size=2, num_classes=5, dim=32, depth=2, num_heads=2, head_dim=16,
              mlp_dim=48, init="impulse", kernel_size=3)
    models = []
    for mode, alpha in (("II", 0.2), ("I", 0.0)):     # mode II ignores α
        torch.manual_seed(3)
        models.append(SimpleViT(mode=mode, alpha=alpha, **kw).double())
    a, b = models
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 8, 12, dtype=torch.float64)
    out_a, out_b = a(x), b(x)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-12, msg=name)
    # and at α > 0 Model I does read the content: the two differ
    c = SimpleViT(mode="I", alpha=0.2, **kw).double()
    c.load_state_dict(a.state_dict())
    assert (c(x) - out_a).abs().max() > 1e-6


def test_simple_vit_attention_maps_shape():
    m = SimpleViT(image_size=8, patch_size=2, num_classes=2, dim=32, depth=2, num_heads=2, head_dim=16, mlp_dim=32)
    maps = m.attention_maps(torch.randn(1, 3, 8, 8))
    assert len(maps) == 2 and maps[0].shape[-2:] == (16, 16)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(maps[0].shape[:-1]))


def test_simple_vit_bad_args():
    with pytest.raises(ValueError, match="patch_size"):
        SimpleViT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="attention"):
        SimpleViT(image_size=8, patch_size=2, dim=32, attention="linear")
    m = SimpleViT(image_size=8, patch_size=2, num_classes=2, dim=32, depth=1, num_heads=2, head_dim=16, mlp_dim=32)
    with pytest.raises(ValueError, match="img"):
        m(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("filters", FILTER_INITS)
def test_convmixer_banks_and_freeze(filters):
    freeze = filters != "learned"
    m = ConvMixer(image_size=8, patch_size=2, num_classes=4, dim=16, depth=2, kernel_size=3, filters=filters,
                  freeze=freeze)
    out = m(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 4)
    out.sum().backward()
    for dw in m.spatial:
        assert (dw.weight.grad is None) == freeze


def test_convmixer_impulse_filters_are_one_hot():
    m = ConvMixer(dim=16, depth=1, kernel_size=5, filters="impulse", freeze=True)
    w = m.spatial[0].weight[:, 0]
    assert torch.equal(w.flatten(1).sum(1), torch.ones(16)) and torch.equal(w.flatten(1).max(1).values,
                                                                            torch.ones(16))


def test_convmixer_bad_args():
    with pytest.raises(ValueError, match="freeze"):
        ConvMixer(filters="learned", freeze=True)
    with pytest.raises(ValueError, match="filters"):
        ConvMixer(filters="sobel")
