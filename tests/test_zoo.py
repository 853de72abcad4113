"""The torchvision classification zoo on arrays: CNNs, depthwise, LayerNorm CNNs, ViT, Swin (issue 12).

Small configurations and inputs keep this file fast; ``scripts/zoo.py`` checks every architecture.
"""
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from mcsim import Hardware, convert
from mcsim.engine.attention import MultiheadAttention, WindowAttention
from mcsim.models import randomized

IDEAL = Hardware(weight_bits=None, input_bits=None, adc={"bits": None})
NOISY = Hardware(error={"model": "proportional", "sigma": 0.05}, weight_bits=8, input_bits=8, adc={"bits": 8})


def _small_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


def _small_swin(v2=False):
    from torchvision.models import swin_transformer as sw

    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    return sw.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                              num_classes=10, **extra)


def _small_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)], num_classes=10)


ZOO = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "convnext": _small_convnext,
    "vit": _small_vit,
    "swin": _small_swin,
    "swin_v2": lambda: _small_swin(v2=True),
}


@pytest.fixture(scope="module", params=list(ZOO))
def zoo_model(request):
    torch.manual_seed(0)
    return request.param, randomized(ZOO[request.param]())


@pytest.mark.slow
def test_ideal_hardware_reproduces_digital_logits(zoo_model):
    name, model = zoo_model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    analog = convert(model, IDEAL, trials=2, seed=0, device="cpu")
    out = analog(x)
    assert out.shape == (2, 2, 10)
    assert torch.allclose(out, ref.expand(2, -1, -1), rtol=0, atol=1e-5 * ref.abs().max().item()), name
    if name in ("vit", "swin", "swin_v2"):
        assert analog.rewritten  # attention projections are modules, hence on arrays
        assert any(n.endswith(("in_proj", "qkv")) for n in analog.layer_names)
        assert any(n.endswith(("out_proj", ".proj")) for n in analog.layer_names)
        assert any(d["type"] in ("MultiheadAttention", "WindowAttention") for d in analog.digital_layers)


@pytest.mark.slow
def test_crossbar_layer_names_are_the_converted_names(zoo_model):
    """Per-layer hardware patterns match the names the converted model uses (attention's in_proj too)."""
    from mcsim.engine.convert import crossbar_layers

    name, model = zoo_model
    analog = convert(model, IDEAL, trials=1, device="cpu")
    assert crossbar_layers(model) == analog.layer_names


@pytest.mark.slow
def test_noisy_chips_run_and_differ(zoo_model):
    name, model = zoo_model
    x = torch.randn(2, 3, 32, 32)
    analog = convert(model, NOISY, trials=2, seed=0, device="cpu")
    analog.calibrate([torch.randn(2, 3, 32, 32)])
    out = analog(x)
    assert torch.isfinite(out).all(), name
    assert not torch.equal(out[0], out[1]), name


# ---------------------------------------------------------------- nn.MultiheadAttention, call by call


def _mha_pair(**kw):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, **kw).eval()
    if mha.in_proj_bias is not None:
        nn.init.normal_(mha.in_proj_bias, std=0.1)
    return mha, MultiheadAttention(mha).eval()


@pytest.mark.parametrize("kw, call", [
    (dict(batch_first=True), dict(need_weights=False)),
    (dict(batch_first=False), dict(need_weights=False)),
    (dict(batch_first=True), dict(need_weights=True)),
    (dict(batch_first=True), dict(need_weights=True, average_attn_weights=False)),
    (dict(batch_first=True, add_bias_kv=True, add_zero_attn=True), dict(need_weights=False)),
    (dict(batch_first=True, bias=False), dict(need_weights=False)),
])
def test_multihead_attention_matches_torch_self_attention(kw, call):
    mha, ours = _mha_pair(**kw)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        ref, ref_w = mha(x, x, x, **call)
        out, w = ours(x, x, x, **call)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert (w is None) == (ref_w is None)
    if w is not None:
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_matches_torch_cross_attention_and_masks(need_weights):
    mha, ours = _mha_pair(batch_first=True)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 5 + [True], [False] * 6])
    causal = torch.triu(torch.ones(3, 6, dtype=torch.bool), diagonal=4)
    with torch.no_grad():
        ref = mha(q, kv, kv, key_padding_mask=pad, attn_mask=causal, need_weights=need_weights)
        out = ours(q, kv, kv, key_padding_mask=pad, attn_mask=causal, need_weights=need_weights)
        torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
        v = torch.randn(2, 6, 16)  # key and value apart
        torch.testing.assert_close(ours(q, kv, v)[0], mha(q, kv, v)[0], rtol=1e-5, atol=1e-6)


def test_multihead_attention_separate_projections_on_arrays():
    mha, ours = _mha_pair(batch_first=True, kdim=8, vdim=12)
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 4, 8), torch.randn(2, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(q, k, v)[0], mha(q, k, v)[0], rtol=1e-5, atol=1e-6)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x[..., :16], x[..., 16:24], x[..., 24:], need_weights=False)[0].mean(1)

    x = torch.randn(2, 4, 36)
    analog = convert(Net().eval(), IDEAL, trials=1, device="cpu")
    assert sorted(analog.layer_names) == ["attn.k_proj", "attn.out_proj", "attn.q_proj", "attn.v_proj"]
    with torch.no_grad():
        ref = mha(x[..., :16], x[..., 16:24], x[..., 24:], need_weights=False)[0].mean(1)
    torch.testing.assert_close(analog(x)[0], ref, rtol=1e-4, atol=1e-5)


def test_swin_window_attention_matches_torchvision():
    torch.manual_seed(0)
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    for cls in (ShiftedWindowAttention, ShiftedWindowAttentionV2):
        attn = cls(32, [4, 4], [2, 2], 4).eval()
        nn.init.normal_(attn.qkv.bias, std=0.1)
        x = torch.randn(2, 6, 7, 32)  # padded to windows, shifted
        with torch.no_grad():
            torch.testing.assert_close(WindowAttention(attn)(x), attn(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- functional uses, unsupported modules


class _Functional(nn.Module):
    """Reads its Linear's weight and hands it to F.linear: the layer cannot be analog."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        return F.linear(x, self.fc.weight, self.fc.bias)


def test_a_linear_read_as_a_tensor_stays_digital_with_a_warning():
    torch.manual_seed(0)
    model = _Functional().eval()
    with pytest.warns(UserWarning, match=r"fc \(.*reads self\.fc\.weight"):
        analog = convert(model, IDEAL, trials=1, device="cpu")
    assert analog.layer_names == ["conv"]
    assert [d["name"] for d in analog.digital_layers if d["type"] == "Linear"] == ["fc"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(analog(x)[0], model(x), rtol=1e-5, atol=1e-6)


def test_an_analog_layer_has_no_weight_tensor():
    analog = convert(nn.Sequential(nn.Linear(4, 3)), IDEAL, trials=1, device="cpu")
    with pytest.raises(RuntimeError, match="runs on crossbars and has no weight tensor"):
        analog.net.get_submodule("0").weight


# ---------------------------------------------------------------- read noise per token


def test_read_noise_is_independent_per_token_and_fixed_per_image():
    """A Linear fed (batch, tokens, features): each (chip, image, token, bit) is its own read."""
    torch.manual_seed(0)
    hw = Hardware(weight_bits=None, input_bits=None, adc={"bits": None},
                  read_noise={"model": "independent", "sigma": 0.05})
    analog = convert(nn.Sequential(nn.Linear(8, 4)), hw, trials=2, seed=5, device="cpu")
    token = torch.randn(8)
    x = token.expand(3, 6, 8).contiguous()  # 3 images of 6 identical tokens
    out = analog(x, image_ids=torch.tensor([10, 11, 12]))  # (chips, images, tokens, 4)
    for c in range(2):
        for i in range(3):
            rows = out[c, i]
            assert len({tuple(r.tolist()) for r in rows}) == 6  # every token its own noise
    assert not torch.equal(out[0], out[1])  # and every chip
    assert not torch.equal(out[:, 0], out[:, 1])  # and every image
    again = analog(x[:2], image_ids=torch.tensor([12, 10]))  # same images in another batch
    torch.testing.assert_close(again[:, 0], out[:, 2], rtol=0, atol=1e-6)
    torch.testing.assert_close(again[:, 1], out[:, 0], rtol=0, atol=1e-6)
