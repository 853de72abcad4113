"""The crossbar engine against independent references (docs/physics.md section 10)."""
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from mcsim import Hardware, convert
from mcsim.models import randomized
from reference import analog_linear

IDEAL = dict(weight_bits=None, input_bits=None, adc={"bits": None})


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomized(torchvision.models.resnet18(num_classes=10))


@pytest.fixture(scope="module")
def depthwise():
    torch.manual_seed(0)
    return randomized(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35))


@pytest.mark.slow  # ResNet18
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("net", ["resnet18", "depthwise"])
def test_ideal_hardware_reproduces_digital_logits(request, net, mapping):
    model = request.getfixturevalue(net)
    x = torch.randn(3, 3, 48, 48)
    ref = model(x)
    analog = convert(model, Hardware(mapping=mapping, rows_max=100, **IDEAL), trials=2, seed=3)
    out = analog(x)
    assert out.shape == (2, 3, 10)
    assert torch.allclose(out, ref.expand(2, -1, -1), rtol=0, atol=2e-5 * ref.abs().max().item())


def _fake_quantized(model, analog):
    """A digital copy whose convs and linears use 8-bit weights and 8-bit inputs over the engine's
    calibrated input ranges: written from docs/physics.md sections 2 and 5, not from the engine."""
    from mcsim.engine.convert import fold_batchnorm

    ref = fold_batchnorm(model)
    cal = analog.calibration()
    for name in analog.layer_names:
        m = ref.get_submodule(name)
        w = m.weight.detach().double()  # float32 would round near-ties differently from exact rounding
        w_max = w.abs().max()
        m.weight.data = (torch.round(w / w_max * 127).clamp(-127, 127) * w_max / 127).float()
        x_range, signed = cal[name]["x_range"], cal[name]["signed"]
        n_max = 127 if signed else 255

        def pre(_m, inp, x_range=x_range, signed=signed, n_max=n_max):
            n = torch.round(inp[0] / x_range * n_max).clamp(-n_max if signed else 0, n_max)
            return (n * x_range / n_max,)

        m.register_forward_pre_hook(pre)
    return ref


@pytest.mark.slow  # ResNet18
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("slices", [1, 2, 4])
def test_8bit_weights_and_inputs_equal_fake_quantized_model(resnet18, mapping, slices):
    """Each analog layer, fed the fake-quantized model's own input, reproduces that model's layer
    output; and the whole network's logits stay close (input-rounding ties can flip a level)."""
    hw = Hardware(mapping=mapping, slices=slices, weight_bits=8, input_bits=8, adc={"bits": None}, rows_max=300)
    analog = convert(resnet18, hw, trials=1)
    analog.calibrate([torch.randn(6, 3, 40, 40)])
    ref = _fake_quantized(resnet18, analog)
    seen = {}

    def keep(name):
        def hook(_m, inp, out):
            seen[name] = (inp[0].clone(), out.clone())  # ReLU(inplace) rewrites outputs

        return hook

    for name in analog.layer_names:
        ref.get_submodule(name).register_forward_hook(keep(name))
    x = torch.randn(3, 3, 40, 40)
    logits = ref(x)
    analog.ctx.chips, analog.ctx.image_ids = torch.tensor([0]), torch.arange(3)
    for name, layer in zip(analog.layer_names, analog.analog_layers()):
        inp, out = seen[name]
        got = layer(inp)
        assert torch.allclose(got, out, rtol=0, atol=2e-5 * out.abs().max().item()), (name, (got - out).abs().max().item(), (got - out).abs().gt(1e-4).sum().item())
    assert torch.allclose(analog(x)[0], logits, rtol=0, atol=0.05 * logits.abs().max().item())


CASES = [
    dict(mapping="differential", slices=1, bitserial=False, signed=False, lim=(-3.0, 3.0)),
    dict(mapping="differential", slices=3, bitserial=False, signed=True, lim=(-2.0, 2.5)),
    dict(mapping="offset", slices=1, bitserial=False, signed=False, lim=(0.0, 9.0)),
    dict(mapping="offset", slices=2, bitserial=True, signed=False, lim=(0.0, 7.0)),
    # asymmetric limits: with an even level count, symmetric limits put y = 0 exactly on a rounding tie
    dict(mapping="differential", slices=2, bitserial=True, signed=True, lim=(-2.1, 1.9)),
    dict(mapping="offset", slices=4, bitserial=True, signed=True, lim=(-5.0, 6.0), analog_acc=True),
]


@pytest.mark.parametrize("case", CASES)
def test_split_path_matches_loop_reference(case):
    """Partitions, slices, bit-serial inputs and a real ADC on one Linear layer vs tests/reference.py."""
    torch.manual_seed(1)
    k, n_out, rows_max, gmin = 50, 6, 16, 0.02
    lin = nn.Linear(k, n_out)
    x = torch.randn(7, k) if case["signed"] else torch.rand(7, k) * 1.2
    x_range = 1.0
    hw = Hardware(
        mapping=case["mapping"], slices=case["slices"], weight_bits=8, input_bits=5, rows_max=rows_max,
        on_off_ratio=1 / gmin, input_mode="bitserial" if case["bitserial"] else "analog",
        input_accumulation="analog" if case.get("analog_acc") else "digital",
        adc={"bits": 6, "range": "explicit", "limits": case["lim"]},
    )
    analog = convert(nn.Sequential(lin), hw, trials=1)
    analog.load_calibration({"0": {"x_range": x_range, "signed": case["signed"], "adc_range": None}})
    out = analog(x)[0].double().numpy()
    ref = analog_linear(
        lin.weight.detach().numpy(), lin.bias.detach().numpy(), x.numpy(), mapping=case["mapping"], weight_bits=8,
        slices=case["slices"], input_bits=5, x_range=x_range, signed=case["signed"], rows_max=rows_max, gmin=gmin,
        adc_bits=6, adc_lo=case["lim"][0], adc_hi=case["lim"][1], bitserial=case["bitserial"],
        digital_accumulation=not case.get("analog_acc"),
    )
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_split_path_matches_reference_on_partitioned_conv():
    """A conv whose rows are cut into channel-aligned arrays equals the reference on its im2col matrix."""
    torch.manual_seed(2)
    conv = nn.Conv2d(12, 5, 3, padding=1, bias=True)
    x = torch.rand(2, 12, 5, 5)
    lim = (-4.0, 4.0)
    hw = Hardware(weight_bits=8, input_bits=6, rows_max=40, adc={"bits": 7, "range": "explicit", "limits": lim})
    analog = convert(nn.Sequential(conv), hw, trials=1)
    analog.load_calibration({"0": {"x_range": 1.0, "signed": False, "adc_range": None}})
    out = analog(x)[0]  # (2, 5, 5, 5)
    cols = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 108).numpy()
    # The engine cuts 12 channels x 9 taps into 3 arrays of 4 channels (36 rows): rows_max=36 in the
    # reference gives the same near-equal contiguous cut.
    ref = analog_linear(conv.weight.detach().reshape(5, -1).numpy(), conv.bias.detach().numpy(), cols,
                        mapping="differential", weight_bits=8, slices=1, input_bits=6, x_range=1.0, signed=False,
                        rows_max=36, gmin=0.01, adc_bits=7, adc_lo=lim[0], adc_hi=lim[1])
    ref = torch.from_numpy(ref).reshape(2, 25, 5).transpose(1, 2).reshape(2, 5, 5, 5)
    assert torch.allclose(out.double(), ref, atol=1e-4 * ref.abs().max().item())


@pytest.mark.slow  # ResNet18
def test_same_chip_alone_or_among_others(resnet18):
    hw = Hardware(error={"model": "proportional", "sigma": 0.1}, read_noise={"model": "independent", "sigma": 0.01})
    calib = [torch.randn(4, 3, 32, 32)]
    many = convert(resnet18, hw, trials=5, seed=7)
    many.calibrate(calib)
    x = torch.randn(4, 3, 32, 32)
    ids = torch.arange(10, 14)
    out_many = many(x, image_ids=ids)
    alone = convert(resnet18, hw, trials=[3], seed=7)
    alone.load_calibration(many.calibration())
    assert torch.equal(alone(x, image_ids=ids)[0], out_many[3])
    # the same image in another batch position gets the same read noise
    swapped = alone(x.flip(0), image_ids=ids.flip(0))[0].flip(0)
    assert torch.allclose(swapped, out_many[3], atol=1e-5)
    assert not torch.allclose(out_many[0], out_many[1])


def test_range_max_without_calibration_keeps_negative_outputs():
    """Without calibration the DAC treats inputs as signed; the ADC's theoretical range must agree, or
    the offset mapping's negative column outputs are clipped."""
    torch.manual_seed(4)
    lin = nn.Linear(32, 5)
    x = torch.randn(8, 32)
    hw = Hardware(mapping="offset", input_bits=None, weight_bits=None, adc={"bits": 14, "range": "max"})
    out = convert(nn.Sequential(lin), hw, trials=1)(x)[0]
    ref = lin(x).detach()
    step = 2 * 32 * 2 * lin.weight.abs().max().item() / (2**14 - 1)  # column span in weight units / levels
    assert (out - ref).abs().max() < step


def test_default_image_ids_give_each_batch_fresh_read_noise():
    torch.manual_seed(5)
    lin = nn.Linear(16, 4)
    hw = Hardware(weight_bits=None, input_bits=None, adc={"bits": None}, read_noise={"model": "independent", "sigma": 0.05})
    x = torch.rand(3, 16)
    analog = convert(nn.Sequential(lin), hw, trials=2)
    first, second = analog(x), analog(x)
    assert not torch.allclose(first, second)  # images 0-2, then images 3-5
    assert torch.equal(analog(x, image_ids=torch.arange(3)), first)
    assert torch.equal(analog(x, image_ids=torch.arange(3, 6)), second)


class _HeadFirst(nn.Module):
    """Registers its classifier before the convolutions that run first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 4 * 4, 3)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_first_and_last_layers_follow_execution_order_and_streams_follow_names():
    torch.manual_seed(6)
    model = _HeadFirst().eval()
    err = {"model": "proportional", "sigma": 0.1}
    kept = convert(model, Hardware(error=err, analog_first_layer=False, analog_last_layer=False), trials=2, seed=3)
    assert kept.layer_names == ["conv2"]
    everything = convert(model, Hardware(error=err), trials=2, seed=3)
    images, x = torch.rand(4, 1, 8, 8), torch.rand(4, 4, 8, 8)
    outs = []
    for analog in (kept, everything):
        analog.calibrate([images])
        analog.load_calibration({**analog.calibration(), "conv2": kept.calibration()["conv2"]})
        analog.ctx.chips, analog.ctx.image_ids = torch.tensor([0, 1]), torch.arange(4)
        outs.append(analog.net.get_submodule("conv2")(x.repeat(2, 1, 1, 1)))
    assert torch.equal(outs[0], outs[1])  # conv2's chips do not depend on which other layers are analog
