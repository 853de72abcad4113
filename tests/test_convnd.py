"""Conv1d, Conv3d and transposed convolutions on arrays (docs/physics.md section 1, issue 22).

Each runs through the 2-D view of ``mcsim/engine/convnd.py``; these tests check it against torch's own
``F.conv1d``/``F.conv3d``/``F.conv_transpose*d`` and against independent references, never against the view.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.convert import crossbar_layers
from mcsim.engine.counting import counting
from fake_quant import fake_quantized, layer_io
from reference import analog_linear

IDEAL = dict(weight_bits=None, input_bits=None, adc={"bits": None})


def _net(kind):
    torch.manual_seed(0)
    if kind == "conv1d":
        layers, shape = [nn.Conv1d(3, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Conv1d(8, 8, 3, groups=2, dilation=2, padding="same")], (3, 3, 40)
    elif kind == "conv3d":
        layers, shape = [nn.Conv3d(2, 6, 3, stride=(2, 1, 1), padding=1), nn.BatchNorm3d(6), nn.ReLU(),
                         nn.Conv3d(6, 4, (2, 3, 3), groups=2, dilation=(2, 1, 1), padding=(1, 0, 1))], (3, 2, 7, 6, 6)
    elif kind == "convtranspose2d":
        layers, shape = [nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(6, 4, 4, stride=3, padding=2, groups=2, dilation=2)], (3, 4, 5, 5)
    elif kind == "convtranspose1d":
        layers, shape = [nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv1d(6, 4, 3)], (3, 4, 7)
    else:  # convtranspose3d
        layers, shape = [nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=(1, 0, 1))], (3, 2, 3, 4, 3)
    model = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        model(x)  # materializes the LazyLinear
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # a BatchNorm worth folding
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    return model, x


KINDS = ["conv1d", "conv3d", "convtranspose2d", "convtranspose1d", "convtranspose3d"]


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("kind", KINDS)
def test_ideal_hardware_reproduces_digital_logits(kind, mapping):
    model, x = _net(kind)
    with torch.no_grad():
        ref = model(x)
    analog = convert(model, Hardware(mapping=mapping, rows_max=20, **IDEAL), trials=3, seed=1, device="cpu")
    assert analog.layer_names == crossbar_layers(model)  # every convolution on arrays, none kept digital
    assert not [d for d in analog.digital_layers if d["kind"] == "layer"]
    out = analog(x)
    assert out.shape == (3, *ref.shape)
    assert torch.allclose(out, ref.expand_as(out), rtol=0, atol=1e-5 * ref.abs().max().item())


def _torch_conv(m: nn.Module):
    """torch's functional call of a conv module: the reference's own arithmetic (no mcsim view)."""
    d = len(m.kernel_size)
    if m.transposed:
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]
        return lambda x, w: fn(x, w, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    return lambda x, w: fn(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)


@pytest.mark.parametrize("mapping, slices", [("differential", 1), ("offset", 2), ("differential", 4)])
@pytest.mark.parametrize("kind", ["conv1d", "conv3d", "convtranspose2d"])
def test_8bit_weights_and_inputs_equal_fake_quantized_layers(kind, mapping, slices):
    """Each analog layer, fed its own input, equals torch's convolution of the fake-quantized input by
    the fake-quantized weight (tests/fake_quant.py, from docs/physics.md sections 2 and 5)."""
    from mcsim.engine.convert import fold_batchnorm

    model, x = _net(kind)
    hw = Hardware(mapping=mapping, slices=slices, weight_bits=8, input_bits=8, adc={"bits": None}, rows_max=30)
    analog = convert(model, hw, trials=1, device="cpu")
    analog.calibrate([torch.randn_like(x)])
    digital, cal = fold_batchnorm(model), analog.calibration()
    seen = layer_io(analog, x)
    for name in analog.layer_names:
        inp, got = seen[name]
        m = digital.get_submodule(name)
        wq, xq = fake_quantized(m.weight, inp, cal[name])
        ref = (_torch_conv(m) if not isinstance(m, nn.Linear) else lambda a, b: F.linear(a, b, m.bias))(xq, wq)
        assert torch.allclose(got, ref, rtol=0, atol=2e-5 * ref.abs().max().item()), (name, (got - ref).abs().max())


LIM, GMIN = (0.0, 7.0), 0.02  # as tests/test_engine.py's CASES (asymmetric limits: no rounding ties at y = 0)
SPLIT = dict(weight_bits=8, input_bits=5, slices=2, input_mode="bitserial", input_accumulation="digital",
             mapping="offset", on_off_ratio=1 / GMIN, adc={"bits": 6, "range": "explicit", "limits": LIM})


def _reference(w, b, cols, rows_max):
    return analog_linear(w.detach().reshape(len(w), -1).numpy(), b.detach().numpy(), cols, mapping="offset",
                         weight_bits=8, slices=2, input_bits=5, x_range=1.0, signed=False, rows_max=rows_max,
                         gmin=GMIN, adc_bits=6, adc_lo=LIM[0], adc_hi=LIM[1], bitserial=True)


def test_partitioned_conv1d_with_slices_bitserial_and_adc_matches_loop_reference():
    """A Conv1d cut into channel-aligned arrays equals tests/reference.py on its im2col matrix."""
    torch.manual_seed(3)  # seed 2 puts one output on an ADC rounding tie (float32 vs the reference's float64)
    conv = nn.Conv1d(16, 6, 4, padding=1)
    x = torch.rand(2, 16, 9) * 1.2
    analog = convert(nn.Sequential(conv), Hardware(rows_max=16, **SPLIT), trials=1, device="cpu")
    analog.load_calibration({"0": {"x_range": 1.0, "signed": False, "adc_range": None}})
    out = analog(x)[0]  # (2, 6, 8)
    cols = F.unfold(x.unsqueeze(2), (1, 4), padding=(0, 1)).transpose(1, 2).reshape(-1, 64).numpy()
    # 16 channels x 4 taps cut into 4 arrays of 4 channels (16 rows): the reference's contiguous cut
    ref = torch.from_numpy(_reference(conv.weight, conv.bias, cols, 16)).reshape(2, 8, 6).transpose(1, 2)
    assert torch.allclose(out.double(), ref, atol=1e-4 * ref.abs().max().item())


def test_conv3d_with_slices_bitserial_and_adc_matches_loop_reference():
    """A Conv3d equals tests/reference.py on its 3-D im2col matrix (rows in torch's (c, kd, kh, kw) order)."""
    torch.manual_seed(4)  # seeds 3 and 5 put an output or two (of 288) on an ADC rounding tie
    conv = nn.Conv3d(3, 4, (2, 3, 3), stride=(2, 1, 1), padding=(1, 1, 0))
    x = torch.rand(2, 3, 5, 4, 5) * 1.2
    analog = convert(nn.Sequential(conv), Hardware(**SPLIT), trials=1, device="cpu")
    analog.load_calibration({"0": {"x_range": 1.0, "signed": False, "adc_range": None}})
    out = analog(x)[0]
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    patches = xp.unfold(2, 2, 2).unfold(3, 3, 1).unfold(4, 3, 1)  # (N, C, D', H', W', kd, kh, kw)
    cols = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, 54).numpy()
    ref = torch.from_numpy(_reference(conv.weight, conv.bias, cols, 54))
    ref = ref.reshape(2, *out.shape[-3:], 4).permute(0, 4, 1, 2, 3)
    assert out.shape == ref.shape == conv(x).shape
    assert torch.allclose(out.double(), ref, atol=1e-4 * ref.abs().max().item())


NOISY = dict(error={"model": "proportional", "sigma": 0.1}, read_noise={"model": "independent", "sigma": 0.02},
             weight_bits=8, input_bits=6, slices=2, adc={"bits": 7}, rows_max=20)


@pytest.mark.parametrize("kind", ["conv1d", "conv3d", "convtranspose2d"])
def test_same_chip_alone_or_among_others(kind):
    model, x = _net(kind)
    many = convert(model, Hardware(**NOISY), trials=4, seed=7, device="cpu")
    many.calibrate([torch.randn_like(x)])
    ids = torch.arange(10, 10 + len(x))
    out_many = many(x, image_ids=ids)
    alone = convert(model, Hardware(**NOISY), trials=[2], seed=7, device="cpu")
    alone.load_calibration(many.calibration())
    assert torch.equal(alone(x, image_ids=ids)[0], out_many[2])
    assert torch.equal(alone(x[1:], image_ids=ids[1:])[0], out_many[2, 1:])  # another batch
    assert not torch.allclose(out_many[0], out_many[1])


class _Twin(nn.Module):
    """A Conv1d's twin: the same weights as a Conv2d with a (1, k) kernel, named alike."""

    def __init__(self, conv1d: nn.Conv1d):
        super().__init__()
        self.conv = nn.Conv2d(conv1d.in_channels, conv1d.out_channels, (1, conv1d.kernel_size[0]),
                              (1, conv1d.stride[0]), (0, conv1d.padding[0]), (1, conv1d.dilation[0]), conv1d.groups)
        with torch.no_grad():
            self.conv.weight.copy_(conv1d.weight.unsqueeze(2))
            self.conv.bias.copy_(conv1d.bias)

    def forward(self, x):
        return self.conv(x.unsqueeze(2)).squeeze(2)


@pytest.mark.parametrize("hw", [
    dict(NOISY, parasitics={"rp": 0.05}, input_mode="bitserial",
         adc={"bits": 6, "range": "explicit", "limits": [-3.0, 3.0]}),
    dict(NOISY, mapping="offset", input_mode="bitserial", input_accumulation="analog", adc={"bits": None},
         drift={"time_s": 3600.0}),
], ids=["gated_rows", "offset_analog_accumulation"])
def test_conv1d_is_its_conv2d_twin_bit_for_bit_energy_included(hw):
    """All the physics (parasitics with gated rows, slices, bit-serial, ADC, noise, drift) and the
    energy counts of a Conv1d are those of a Conv2d with a (1, k) kernel: the same numbers, bit for bit."""
    torch.manual_seed(4)
    one = nn.Sequential()
    one.conv = nn.Conv1d(6, 5, 3, stride=2, padding=1, groups=1)
    twin = _Twin(one.conv)
    x = torch.rand(2, 6, 7)
    outs, counts = [], []
    for model in (one, twin):
        analog = convert(model, Hardware(**hw), trials=2, seed=2, device="cpu")
        analog.load_calibration({"conv": {"x_range": 1.0, "signed": False, "adc_range": None}})
        with counting(analog) as counter:
            outs.append(analog(x, image_ids=torch.arange(2)))
        counts.append(counter.result().counts)
    assert torch.equal(outs[0], outs[1])
    for name in counts[0]:
        np.testing.assert_array_equal(counts[0][name], counts[1][name], err_msg=name)


def test_conv3d_energy_counts_follow_its_matrix():
    """ADC conversions of a Conv3d: output positions (depth included) x columns x slices x partitions."""
    conv = nn.Conv3d(4, 3, 3, padding=1)
    hw = Hardware(slices=2, rows_max=40, adc={"bits": 8, "range": "explicit", "limits": [-1.0, 1.0]})
    analog = convert(nn.Sequential(conv), hw, trials=2, device="cpu")
    analog.load_calibration({"0": {"x_range": 1.0, "signed": True, "adc_range": None}})
    with counting(analog) as counter:
        analog(torch.randn(2, 4, 5, 6, 6))
    parts = 3  # 108 rows: 12 (channel, depth tap) rows of 9 taps each, 4 of them (36 rows) per array of 40
    positions = 5 * 6 * 6
    got = counter.result().counts["adc_conversions"]
    assert analog.analog_layers()[0].part.parts == parts
    np.testing.assert_array_equal(got, np.full((2, 1), positions * 3 * 2 * parts))


def test_per_layer_overrides_name_the_new_layers():
    model, x = _net("conv3d")
    hw = Hardware(layers={"0": {"analog": False}, "3": {"weight_bits": 4}}, **IDEAL)
    analog = convert(model, hw, trials=1, device="cpu")
    assert analog.layer_names == ["3", "5"]
    assert [d["name"] for d in analog.digital_layers if d["kind"] == "layer"] == ["0"]
    assert analog.analog_layers()[0].hw.weight_bits == 4
    with torch.no_grad():  # the Conv3d kept digital runs in canonical shapes, BatchNorm folded: exact
        ref = model[2](model[1](model[0](x)))
        got = analog.net.get_submodule("2")(analog.net.get_submodule("0")(x))
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_a_conv_subclass_that_only_changes_its_init_goes_on_arrays_with_its_batchnorm_folded():
    """torchvision's video ResNets build their Conv3d through a subclass (``Conv3DSimple``, no forward of
    its own): it runs on arrays, with the BatchNorm after it folded, as a plain Conv3d would."""
    class Conv3DSimple(nn.Conv3d):
        def __init__(self, c_in, c_out):
            super().__init__(c_in, c_out, 3, padding=1, bias=False)

        @staticmethod
        def get_downsample_stride(stride):
            return stride, stride, stride

    torch.manual_seed(5)
    model = nn.Sequential(Conv3DSimple(2, 4), nn.BatchNorm3d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 27, 3)).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 2, 3, 3, 3)
    with torch.no_grad():
        ref = model(x)
    analog = convert(model, Hardware(**IDEAL), trials=1, device="cpu")
    assert analog.layer_names == ["0", "4"]
    assert not analog.digital_layers  # BatchNorm folded, nothing digital with weights
    assert torch.allclose(analog(x)[0], ref, rtol=0, atol=1e-5 * ref.abs().max().item())
