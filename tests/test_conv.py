"""A programmed block's weights kept in the CPU kernel's own layout (conv.ConvWeight) change nothing:
every call gives F.conv2d's numbers bit for bit, on the layer shapes of a ResNet, on a network, and
where F.conv2d would not run oneDNN (float64, one thread, "same" padding) it is F.conv2d."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import mcsim.engine.conv as conv
from mcsim import Hardware, convert
from mcsim.engine.conv import ConvWeight, canonical_conv
from mcsim.models import randomized

# ResNet18's layer shapes at 112x112 on 8 chips (stem, 3x3, strided 1x1, 4 partitions of layer4, the
# fc as a one-pixel matrix product): (images, channels per group, size, out per group, kernel,
# stride, padding, groups).
SHAPES = [(8, 3, 112, 64, 7, 2, 3, 8), (8, 64, 28, 64, 3, 1, 1, 8), (8, 64, 28, 128, 1, 2, 0, 8),
          (8, 128, 4, 512, 3, 1, 1, 32), (16, 512, 1, 1000, 1, 1, 0, 8)]


def _levels(shape, seed):  # integer DAC levels, as the arrays see them
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("images,cin,size,cout,kernel,stride,padding,groups", SHAPES)
def test_packed_weights_give_the_numbers_of_f_conv2d(images, cin, size, cout, kernel, stride, padding, groups):
    g = torch.Generator().manual_seed(size)
    weight = torch.randn(groups * cout, cin, kernel, kernel, generator=g)
    args = dict(stride=(stride, stride), padding=(padding, padding), dilation=(1, 1))
    packed = ConvWeight(weight)
    for n, seed in ((images, 0), (images, 1), (max(images // 4, 2), 2)):  # packed, again, another batch
        x = _levels((n, groups * cin, size, size), seed)
        assert torch.equal(packed.conv2d(x, groups, args), F.conv2d(x, weight, None, groups=groups, **args))
        assert packed._packed is not None


def test_a_block_padded_with_zero_groups_runs_plain():
    weight = torch.randn(2 * 16, 8, 3, 3)
    packed = ConvWeight(weight)
    x = _levels((4, 2 * 8, 9, 9), 0)
    args = dict(stride=1, padding=1, dilation=1)
    assert torch.equal(canonical_conv(x, packed, None, 2, args), canonical_conv(x, weight, None, 2, args))
    assert packed._packed is None


@pytest.mark.parametrize("case", ["float64", "one_thread", "same_padding", "channels_last"])
def test_calls_off_onednn_plain_kernels_are_f_conv2d(case):
    weight, x = torch.randn(32, 16, 1, 1), _levels((8, 16, 6, 6), 0)
    args = dict(stride=1, padding=0, dilation=1)
    if case == "float64":
        weight, x = weight.double(), x.double()
    if case == "same_padding":
        weight, args = torch.randn(32, 16, 3, 3), dict(stride=1, padding="same", dilation=1)
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(1 if case == "one_thread" else before)  # one thread: torch's own kernel for this 1x1
    try:
        packed = ConvWeight(weight)
        assert torch.equal(packed.conv2d(x, 1, args), F.conv2d(x, weight, None, groups=1, **args))
        assert packed._packed is None
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # three networks converted twice
@pytest.mark.parametrize("hw", [
    dict(mapping="differential"),
    dict(mapping="offset", slices=2, rows_max=100),
    dict(mapping="differential", input_mode="bitserial", input_accumulation="digital"),
], ids=["differential", "offset_sliced_partitioned", "bitserial"])
def test_a_network_gives_the_same_logits_with_and_without_packed_weights(monkeypatch, hw):
    torch.manual_seed(0)
    net = randomized(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    hw = Hardware(weight_bits=8, input_bits=8, adc={"bits": 8}, error={"model": "proportional", "sigma": 0.1},
                  read_noise={"model": "proportional", "sigma": 0.02}, **hw)
    outs = []
    for packing in (True, False):
        if not packing:
            monkeypatch.setattr(conv, "_on_onednn_plain", lambda *_: False)
        analog = convert(net, hw, trials=3, seed=5, device="cpu")
        analog.calibrate([x])
        outs.append(torch.cat([analog(x, image_ids=torch.arange(4)), analog(x[:2], image_ids=torch.arange(2))], 1))
    assert torch.equal(outs[0], outs[1])


def test_packed_copies_are_kept_only_where_both_copies_fit_the_cache():
    """Caching programmed chips saves far more than the reorder: a model whose chips fit the cache only
    without the packed copies keeps them unpacked."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    per_chip = 4 * sum(m.weight.numel() for m in net if hasattr(m, "weight"))  # float32, one slice, no read noise
    x = torch.randn(2, 3, 8, 8)
    for budget, cache, pack in ((8 * per_chip, True, True), (4 * per_chip, True, False), (per_chip, False, False)):
        analog = convert(net, Hardware(adc={"bits": 8}), trials=2, device="cpu", memory_budget=budget)
        analog.calibrate([x])
        analog(x)
        assert (analog.ctx.cache, analog.ctx.pack) == (cache, pack), budget
        kept = [prog.weight for layer in analog.analog_layers() for prog in layer._cache.values()]
        assert bool(kept) == cache and all(isinstance(w, ConvWeight) == pack for w in kept)  # blocks of one chip here
