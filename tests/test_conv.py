"""A programmed block's weights kept in the CPU kernel's own layout (conv.ConvWeight) change nothing:
every call gives F.conv2d's numbers bit for bit, on the layer shapes of a ResNet, on a network, and
where F.conv2d would not run oneDNN (float64, one thread, "same" padding) it is F.conv2d."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import mcsim.engine.conv as conv
from mcsim import Hardware, convert
from mcsim.engine.conv import ConvWeight, canonical_conv, canonical_matmul
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


# A Linear's matrix products (conv.canonical_matmul): (depth K, columns per group) of LSTM gates, a
# ViT's projections and MLP, classifier heads, partitions of a large layer; narrow ones of an odd depth,
# whose numbers MKL changes with a matrix's 16-byte alignment; tiny ones, which bmm runs in a loop of
# its own (under 400 products).
MATMUL_SHAPES = [(28, 256), (64, 256), (64, 10), (48, 144), (96, 48), (192, 48), (300, 40), (784, 64),
                 (1152, 512), (33, 17), (27, 10), (65, 4), (50, 1), (20, 3), (12, 2), (23, 1), (2, 1), (1, 5)]
ROWS = [1, 2, 3, 5, 7, 11, 15, 16, 17, 18, 24, 31, 33, 64, 100, 129, 255, 300]


def _block(shape, seed, offset=0):  # integer levels at an arbitrary element offset (a view into a buffer)
    return _levels((offset + shape[0] * shape[1],), seed)[offset:].view(shape[0], shape[1], 1, 1)


@pytest.mark.parametrize("depth,cols", MATMUL_SHAPES)
def test_a_matrix_product_gives_each_group_the_same_numbers_in_any_call(depth, cols):
    """Bit for bit, a group's outputs on a row do not depend on the rows, the other groups, the group's
    position, the input's placement in memory or the thread count (docs/physics.md section 9)."""
    weight = torch.randn(9 * cols, depth, 1, 1, generator=torch.Generator().manual_seed(depth * cols))
    x = _block((max(ROWS), 9 * depth), 0)
    alone = [canonical_matmul(x[:, c * depth:(c + 1) * depth].contiguous(), weight[c * cols:(c + 1) * cols], None, 1)
             for c in range(9)]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for chips in (1, 2, 3, 5, 9):
                packed = ConvWeight(weight[:chips * cols])
                for rows in ROWS:
                    inp = _block((rows, chips * depth), 1, offset=rows % 5)
                    inp.copy_(x[:rows, :chips * depth])
                    out = canonical_matmul(inp, packed if rows % 2 else weight[:chips * cols], None, chips)
                    for c in range(chips):
                        assert torch.equal(out[:, c * cols:(c + 1) * cols], alone[c][:rows]), (threads, chips, rows, c)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_matrix_product_is_the_grouped_conv(dtype):
    g = torch.Generator().manual_seed(3)
    for groups, rows, depth, cols in ((8, 40, 28, 256), (3, 5, 64, 10), (1, 1, 2, 1), (5, 33, 7, 3)):
        x = _levels((rows, groups * depth, 1, 1), rows).to(dtype)
        weight, bias = torch.randn(groups * cols, depth, 1, 1, generator=g, dtype=dtype), torch.randn(groups * cols, dtype=dtype)
        ref = F.conv2d(x.double(), weight.double(), bias.double(), groups=groups)
        out = canonical_matmul(x, weight, bias, groups)
        assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
        assert torch.allclose(out.double(), ref, rtol=0, atol=1e-6 * ref.abs().max().item())
