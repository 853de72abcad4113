"""What the engine does differently on CUDA, checked on the CPU: its grouped convolutions run one call
per chip (conv.chipwise_conv), which must equal the CPU's single grouped call up to summation
order, and its convolutions run in IEEE float32 (cuDNN's default TF32 off) with the user's settings
restored after. bench/gpu.py checks both on a GPU against the CPU."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import mcsim.engine.conv as conv
from mcsim import Hardware, convert
from mcsim.engine.counting import counting
from mcsim.engine.convert import ieee_float32
from mcsim.engine.conv import canonical_conv, chipwise_conv
from mcsim.models import randomized


@pytest.mark.parametrize("chips,per_chip,kernel,stride", [(1, 1, 3, 1), (4, 1, 3, 2), (3, 5, 1, 1), (5, 2, 3, 1)])
def test_chipwise_conv_is_the_grouped_conv(chips, per_chip, kernel, stride):
    g = torch.Generator().manual_seed(chips * 10 + per_chip)
    cin, cout = 3, 4  # per group
    inp = torch.randn(6, chips * per_chip * cin, 9, 9, generator=g)
    weight = torch.randn(chips * per_chip * cout, cin, kernel, kernel, generator=g)
    bias = torch.randn(chips * per_chip * cout, generator=g)
    args = dict(stride=stride, padding=kernel // 2, dilation=1)
    ref = F.conv2d(inp, weight, bias, groups=chips * per_chip, **args)
    out = chipwise_conv(inp, weight, bias, chips, per_chip, args)
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    assert torch.allclose(canonical_conv(inp, weight, bias, chips * per_chip, args), ref,
                          rtol=0, atol=1e-5 * ref.abs().max().item())


def _net(arch):
    torch.manual_seed(0)
    return randomized(getattr(torchvision.models, arch)(num_classes=10, **({"width_mult": 0.35} if arch == "mobilenet_v2" else {})))


NOISY = dict(weight_bits=8, input_bits=8, adc={"bits": 8}, error={"model": "proportional", "sigma": 0.1},
             read_noise={"model": "proportional", "sigma": 0.02})
CASES = {
    "differential": dict(mapping="differential", **NOISY),
    "offset_sliced_partitioned": dict(mapping="offset", slices=2, rows_max=100, **NOISY),
    "bitserial_digital_acc": dict(mapping="differential", input_mode="bitserial", input_accumulation="digital", **NOISY),
    "gated_rows": dict(mapping="differential", input_mode="bitserial", input_accumulation="digital",
                       parasitics={"rp": 1e-3, "rows": "gated"}, **NOISY),
}


# Gated rows run on the ResNet only: on the depthwise network they take minutes here.
@pytest.mark.slow  # ResNet18 and MobileNetV2 converted twice
@pytest.mark.parametrize("arch,case", [("resnet18", c) for c in CASES] + [("mobilenet_v2", c) for c in CASES
                                                                          if c != "gated_rows"])
def test_networks_agree_between_the_two_layouts(monkeypatch, arch, case):
    # float64: float32's last-bit differences would move a DAC level or an ADC code now and then.
    net = _net(arch).double()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs, energies = [], []
    for devices in ({"cuda"}, {"cuda", "cpu"}):
        monkeypatch.setattr(conv, "_CHIPWISE_DEVICES", devices)
        analog = convert(net, Hardware(**CASES[case]), trials=3, seed=4, device="cpu")
        analog.calibrate([x])
        with counting(analog) as counter:
            outs.append(analog(x, image_ids=torch.arange(3)))
        energies.append(counter.result().joules(analog.hardware.energy))
    ref = outs[0]
    assert torch.allclose(outs[1], ref, rtol=0, atol=1e-10 * ref.abs().max().item())
    assert energies[1] == pytest.approx(energies[0], rel=1e-6)


def test_the_analog_passes_run_in_ieee_float32_and_restore_the_settings():
    flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul, torch.backends.mkldnn.conv,
             torch.backends.mkldnn.matmul)
    before = [f.fp32_precision for f in flags]
    seen = []
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    analog = convert(net, Hardware(), trials=1, device="cpu")
    analog.net.get_submodule("0").register_forward_pre_hook(lambda *_: seen.append([f.fp32_precision for f in flags]))
    x = torch.randn(2, 3, 8, 8)
    analog.calibrate([x])
    analog(x)
    assert seen and all(s == ["ieee"] * 4 for s in seen)
    assert [f.fp32_precision for f in flags] == before
    with pytest.raises(ZeroDivisionError), ieee_float32():
        1 / 0
    assert [f.fp32_precision for f in flags] == before
