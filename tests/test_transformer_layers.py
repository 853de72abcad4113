"""torch's nn.Transformer* modules on arrays (mcsim/engine/transformer.py, issue 22).

torch runs them on a fused kernel (and nested tensors) in inference; mcsim runs torch's unfused path with
every projection and feed-forward Linear on arrays. Checked against torch's own modules.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.convert import ConversionError, crossbar_layers
from fake_quant import fake_quantized, layer_io

IDEAL = Hardware(weight_bits=None, input_bits=None, adc={"bits": None})
NOISY = Hardware(error={"model": "proportional", "sigma": 0.1}, read_noise={"model": "independent", "sigma": 0.02},
                 weight_bits=8, input_bits=8, adc={"bits": 8})


class Encoder(nn.Module):
    """A TransformerEncoder classifier on ``(N, L, E)`` sequences, in either layout; ``pad``: a key
    padding mask from the input (features[-1] == 7 marks padding; left-aligned: torch goes nested)."""

    def __init__(self, batch_first=True, norm_first=False, activation="relu", causal=False, pad=False):
        super().__init__()
        self.batch_first, self.causal, self.pad = batch_first, causal, pad
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first, norm_first=norm_first,
                                           activation=activation)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        kpm = x[:, :, -1] == 7.0 if self.pad else None
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
        h = self.enc(x if self.batch_first else x.transpose(0, 1), mask=mask, src_key_padding_mask=kpm)
        return self.head((h if self.batch_first else h.transpose(0, 1)).mean(1))


class Seq2Seq(nn.Module):
    """nn.Transformer (encoder and decoder) with a causal target mask."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.t = nn.Transformer(16, 4, 1, 1, 32, batch_first=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        src, tgt = x, x[:, :5] * 0.5
        if not self.batch_first:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        h = self.t(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), tgt_is_causal=True)
        return self.head(h if self.batch_first else h.transpose(0, 1)).flatten(1)


MODELS = {
    "batch_first": lambda: Encoder(),
    "seq_first": lambda: Encoder(batch_first=False),
    "norm_first_gelu": lambda: Encoder(norm_first=True, activation="gelu"),
    "causal": lambda: Encoder(causal=True),
    "padding_nested": lambda: Encoder(pad=True),
    "padding_seq_first": lambda: Encoder(batch_first=False, pad=True),
    "transformer": lambda: Seq2Seq(),
    "transformer_seq_first": lambda: Seq2Seq(batch_first=False),
}


def _model(name):
    torch.manual_seed(0)
    x = torch.randn(4, 9, 16)
    x[::2, -3:, -1] = 7.0  # padding marks (read only by the padding models)
    return MODELS[name]().eval(), x


@pytest.mark.parametrize("name", list(MODELS))
def test_ideal_hardware_reproduces_torch(name):
    """torch's module (fused kernel, nested tensors where it takes them) vs the unfused path on arrays."""
    model, x = _model(name)
    with torch.no_grad():
        ref = model(x)
    analog = convert(model, IDEAL, trials=3, seed=1, device="cpu")
    assert analog.layer_names == crossbar_layers(model)
    assert not [d for d in analog.digital_layers if d["kind"] == "layer"]
    assert {"in_proj", "out_proj", "linear1", "linear2"} <= {n.rpartition(".")[2] for n in analog.layer_names}
    out = analog(x)
    assert torch.allclose(out, ref.expand_as(out), rtol=0, atol=1e-5 * ref.abs().max().item()), name


@pytest.mark.parametrize("name", ["batch_first", "transformer_seq_first"])
def test_8bit_weights_and_inputs_equal_fake_quantized_linears(name):
    """Every Linear on arrays (packed in_proj included), fed its own input, equals F.linear of the
    fake-quantized input by the fake-quantized weight as torch stores it (tests/fake_quant.py)."""
    model, x = _model(name)
    analog = convert(model, Hardware(weight_bits=8, input_bits=8, adc={"bits": None}), trials=1, device="cpu")
    analog.calibrate([torch.randn_like(x)])
    cal, seen = analog.calibration(), layer_io(analog, x)
    for name in analog.layer_names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        w, b = ((owner.in_proj_weight, owner.in_proj_bias) if child == "in_proj"
                else (owner.get_submodule(child).weight, owner.get_submodule(child).bias))
        inp, got = seen[name]
        wq, xq = fake_quantized(w, inp, cal[name])
        ref = F.linear(xq, wq, b)
        assert torch.allclose(got, ref, rtol=0, atol=2e-5 * ref.abs().max().item()), (name, (got - ref).abs().max())


@pytest.mark.parametrize("name", ["padding_seq_first", "transformer"])
def test_same_chip_alone_or_among_others(name):
    model, x = _model(name)
    many = convert(model, NOISY, trials=4, seed=7, device="cpu")
    many.calibrate([torch.randn_like(x)])
    ids = torch.arange(10, 14)
    out_many = many(x, image_ids=ids)
    alone = convert(model, NOISY, trials=[2], seed=7, device="cpu")
    alone.load_calibration(many.calibration())
    assert torch.equal(alone(x, image_ids=ids)[0], out_many[2])
    assert not torch.allclose(out_many[0], out_many[1])


def test_per_layer_overrides_name_the_feed_forward_and_projections():
    model, x = _model("batch_first")
    layers = {"enc.layers.0.linear1": {"analog": False}, "enc.layers.*.self_attn.in_proj": {"weight_bits": 4}}
    hw = Hardware(layers=layers, weight_bits=None, input_bits=None, adc={"bits": None})
    analog = convert(model, hw, trials=1, device="cpu")
    assert "enc.layers.0.linear1" not in analog.layer_names
    assert [d["name"] for d in analog.digital_layers if d["kind"] == "layer"] == ["enc.layers.0.linear1"]
    assert {layer.name: layer.hw.weight_bits for layer in analog.analog_layers() if layer.name.endswith("in_proj")} == {
        "enc.layers.0.self_attn.in_proj": 4, "enc.layers.1.self_attn.in_proj": 4}


def test_analog_last_layer_is_the_head_after_the_encoder():
    """Layers inside a module torch.fx keeps whole run where it runs: the head, not an encoder Linear, is last."""
    model, _ = _model("batch_first")
    analog = convert(model, Hardware(analog_last_layer=False), trials=1, device="cpu")
    assert [d["name"] for d in analog.digital_layers if d["kind"] == "layer"] == ["head"]


def test_a_transformer_layer_with_a_forward_of_its_own_is_refused_by_name():
    class Custom(nn.TransformerEncoderLayer):
        def forward(self, src, *args, **kwargs):
            return super().forward(src, *args, **kwargs) * 2

    model = nn.Sequential(Custom(16, 4, 32, batch_first=True), nn.Linear(16, 3))
    with pytest.raises(ConversionError, match=r"'0' is a Custom with a forward of its own"):
        convert(model, IDEAL, trials=1, device="cpu")
