"""The convolutions of a chip block: every chip's arrays side by side, in shapes that keep each chip's
numbers independent of its block (docs/physics.md section 9), at the kernels' speed.

A block's weights are chip-major: chip c owns a contiguous block of output channels, and its inputs
the matching block of input channels (``groups_per_chip`` groups each).

* :func:`canonical_conv` (CPU): one grouped ``F.conv2d`` for the block, padded to the shapes above
  which oneDNN's summation order no longer depends on the block.
* :func:`canonical_matmul` (CPU, a Linear: a 1x1 convolution of one pixel): one ``torch.bmm`` with
  the block's matrices as its batch, in the shapes and memory placement in which MKL's summation
  order no longer depends on the block.
* :func:`chipwise_conv` (CUDA): one call per chip.
* :class:`ConvWeight`: a programmed weight that keeps the CPU kernel's own layout of itself.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

# The canonical floors of a grouped convolution (see canonical_conv): images per call, images
# per call when the output is a single pixel (a matrix product), and groups per call.
_MIN_ROWS, _MIN_ROWS_GEMM, _MIN_GROUPS = 2, 16, 3
# The canonical shapes of canonical_matmul: rows per matrix a multiple of _ROW_BLOCK, columns at least
# _MIN_COLS (MKL runs a single column in another kernel, whose order depends on the call), and the
# products per matrix below which torch's bmm runs its own loop instead of MKL (rows * columns * depth
# < 400 in torch 2.14).
_ROW_BLOCK, _MIN_COLS, _MIN_PRODUCTS_MKL = 16, 2, 400
_CHIPWISE_DEVICES = {"cuda"}  # device types whose grouped convolutions run one call per chip (chipwise_conv)


class ConvWeight:
    """A programmed block's convolution weight, kept also in the layout the CPU kernel reads.

    oneDNN's CPU convolutions read weights in a blocked layout of their own and reorder a plain tensor
    into it on every call. For a chip block that is a pass over all the block's weights in every layer
    call, which one digital network of the same batch pays once: it made up most of the gap between an
    analog and a digital ResNet18 pass at 112x112 and 8 images (``bench/engine.py``). A programmed
    block serves many calls, so its first call that runs on oneDNN keeps the reordered copy (torch's
    prepacked oneDNN convolution) and later calls read it.

    The kernel is the one ``F.conv2d`` picks for the call (``torch._C._select_conv_backend``), so the
    numbers are the same, bit for bit; a call of another shape has oneDNN reorder the packed copy, as it
    would the plain one. Costs a second copy of the weight while the block is kept.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._packed = None  # the oneDNN context, made at the first call that runs on oneDNN
        self._matrices: Optional[torch.Tensor] = None  # canonical_matmul's copy, made at its first call

    def matrices(self, groups: int) -> torch.Tensor:
        """The weight as :func:`canonical_matmul` reads it (:func:`_weight_matrices`), kept."""
        if self._matrices is None:
            self._matrices = _weight_matrices(self.tensor, groups)
        return self._matrices

    def conv2d(self, inp: torch.Tensor, groups: int, conv_args: dict) -> torch.Tensor:
        """``F.conv2d(inp, self.tensor, None, groups=groups, **conv_args)``, from the packed copy where
        ``F.conv2d`` would run oneDNN."""
        args = _expanded(conv_args)
        if args is None or not _on_onednn_plain(inp, self.tensor, groups, args):
            return F.conv2d(inp, self.tensor, None, groups=groups, **conv_args)
        if self._packed is None:
            self._packed = torch.ops.mkldnn_prepacked.conv2d_prepack(
                self.tensor, None, args["stride"], args["padding"], args["dilation"], groups,
                list(inp.shape), "none")
        return torch.ops.mkldnn_prepacked.conv2d_run(inp, self._packed)


Weight = Union[torch.Tensor, ConvWeight]


def _expanded(conv_args: dict) -> Optional[dict]:
    """``conv_args`` as the ``[h, w]`` lists of oneDNN's calls; None for a string padding ("same")."""
    if isinstance(conv_args["padding"], str):
        return None
    return {k: [v, v] if isinstance(v, int) else list(v) for k, v in conv_args.items()}


def _on_onednn_plain(inp: torch.Tensor, weight: torch.Tensor, groups: int, args: dict) -> bool:
    """Whether ``F.conv2d`` runs this call on oneDNN in the plain layout: contiguous tensors (no
    channels-last kernels), and the backend torch picks from the shapes, dtype, device, thread count
    and torch.backends settings."""
    return inp.is_contiguous() and weight.is_contiguous() and torch._C._select_conv_backend(
        inp, weight, None, args["stride"], args["padding"], args["dilation"], False, [0, 0], groups,
    ) == torch._C._ConvBackend.Mkldnn


def _tensor(weight: Weight) -> torch.Tensor:
    """The plain tensor of a weight."""
    return weight.tensor if isinstance(weight, ConvWeight) else weight


def canonical_conv(inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor], groups: int,
                   conv_args: dict, *, grouped: bool = True) -> torch.Tensor:
    """``F.conv2d`` of ``inp (N, groups * C_g, H, W)`` in a canonical shape (determinism contract).

    oneDNN picks its kernel, and so each output's summation order, from the call's shape. Measured
    on its CPU kernels: with at least 3 groups and at least 2 images (16 when the output is one
    pixel, a matrix product), and the bias added after the kernel, a group's outputs are
    bit-identical whatever the group count, the group's position, the batch and the thread count; an
    ungrouped convolution (``grouped=False``: a digital layer, every chip in its batch) needs only the
    image floor. Below those floors zero groups and zero images pad the call; they cost only when a
    block holds fewer than 3 chips or images.
    """
    tensor = _tensor(weight)
    rows, cout = inp.shape[0], tensor.shape[0]
    floor = _MIN_ROWS_GEMM if inp.shape[-2:] == (1, 1) and tensor.shape[-2:] == (1, 1) else _MIN_ROWS
    if rows < floor:
        inp = F.pad(inp, (0, 0, 0, 0, 0, 0, 0, floor - rows))
    if grouped and groups < _MIN_GROUPS:
        extra = _MIN_GROUPS - groups
        inp = F.pad(inp, (0, 0, 0, 0, 0, extra * (inp.shape[1] // groups)))
        # A plain tensor again: a block this small costs little to reorder, and a packed copy of its
        # zero groups would be kept too.
        weight = torch.cat([tensor, tensor.new_zeros(extra * (cout // groups), *tensor.shape[1:])])
        groups = _MIN_GROUPS
    if isinstance(weight, ConvWeight):
        out = weight.conv2d(inp, groups, conv_args)
    else:
        out = F.conv2d(inp, weight, None, groups=groups, **conv_args)
    if out.shape[0] > rows or out.shape[1] > cout:
        out = out[:rows, :cout].contiguous()
    # The bias is added apart: inside the kernel, where it enters the sum depends on the kernel.
    return out if bias is None else out.add_(bias.view(-1, 1, 1))


def _padded(m: torch.Tensor, rows: int) -> torch.Tensor:
    """A copy of the matrices ``m (G, R, K)`` in a fresh contiguous buffer (64-byte aligned), zero rows
    padding each to ``rows``."""
    out = (m.new_zeros if rows > m.shape[1] else m.new_empty)(m.shape[0], rows, m.shape[2])
    out[:, : m.shape[1]] = m
    return out


def _weight_matrices(tensor: torch.Tensor, groups: int) -> torch.Tensor:
    """A Linear's chip-major weight ``(groups * C_g, K, 1, 1)`` as :func:`canonical_matmul` reads it:
    matrices ``(groups, max(C_g, _MIN_COLS), K)``, zero columns beyond ``C_g``."""
    m = tensor.view(groups, -1, tensor.shape[1])
    return _padded(m, max(m.shape[1], _MIN_COLS))


def canonical_matmul(inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """:func:`canonical_conv` of a 1x1 convolution on one pixel (a Linear), ``inp (N, groups * K, 1,
    1)``: one ``torch.bmm`` with the groups as its batch, ``(groups, N, K) @ (groups, K, C_g)``.

    torch's CPU ``bmm`` runs one MKL ``sgemm`` per matrix (8-10x the speed oneDNN's grouped
    convolution reaches on these shapes), so a group's outputs never depend on the other groups;
    MKL picks each output's summation order from the matrix's shape and placement. Measured on
    torch 2.14 (``tests/test_conv.py``): with a multiple of 16 rows (a row in a smaller last block
    of rows, or a call of fewer rows, may be summed in another order), at least 2 columns (one runs
    another kernel), at least 400 products per matrix (below that ``bmm`` runs a loop of its own)
    and every input matrix starting at a multiple of 64 bytes (16-byte offsets change narrow
    products: a fresh buffer of a multiple of 16 rows keeps them there), a row's
    outputs are bit-identical whatever the row count, the group count and position and the thread
    count. Zero rows and columns pad each call to those shapes. Outputs ``(N, groups * C_g, 1,
    1)``, the bias added after the kernel.
    """
    tensor = _tensor(weight)
    rows, k = inp.shape[0], inp.shape[1] // groups
    cols = tensor.shape[0] // groups
    w = weight.matrices(groups) if isinstance(weight, ConvWeight) else _weight_matrices(tensor, groups)
    padded = -(-max(rows, -(-_MIN_PRODUCTS_MKL // (k * w.shape[1]))) // _ROW_BLOCK) * _ROW_BLOCK
    x = _padded(inp.view(rows, groups, k).transpose(0, 1), padded)
    out = x.new_empty(padded, groups, w.shape[1])  # the network's layout, written by the kernel
    torch.bmm(x, w.transpose(1, 2), out=out.transpose(0, 1))
    out = out[:rows, :, :cols].reshape(rows, groups * cols, 1, 1)  # a copy only where columns were padded
    return out if bias is None else out.add_(bias.view(-1, 1, 1))


def chipwise_conv(inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor], chips: int,
                  groups_per_chip: int, conv_args: dict) -> torch.Tensor:
    """The chip-major grouped convolution of :func:`canonical_conv` as one ``F.conv2d`` per chip.

    On CUDA, cuDNN spends most of a float32 convolution of many groups in layout transposes (58% of
    a ResNet50 pass on an H200, ``bench/gpu.py --sections profile``); one call per chip keeps the
    layer's own groups (one for most layers) and runs the dense kernels. A chip's outputs then
    depend only on its own call's shape, as on the CPU.
    """
    tensor = _tensor(weight)
    outs = [F.conv2d(i, w, None, groups=groups_per_chip, **conv_args)
            for i, w in zip(inp.chunk(chips, 1), tensor.chunk(chips, 0))]
    out = torch.cat(outs, 1) if chips > 1 else outs[0]
    return out if bias is None else out.add_(bias.view(-1, 1, 1))


def grouped_conv(inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor], chips: int, groups_per_chip: int,
                 conv_args: dict, *, matmul: bool = False) -> torch.Tensor:
    """``inp (N, chips * groups_per_chip * C_g, H, W)`` through chip-major ``weight``: one grouped call
    on the CPU (:func:`canonical_conv`; :func:`canonical_matmul` for a Linear's, ``matmul``), one call
    per chip on CUDA (:func:`chipwise_conv`)."""
    if inp.device.type in _CHIPWISE_DEVICES:
        return chipwise_conv(inp, weight, bias, chips, groups_per_chip, conv_args)
    if matmul:
        return canonical_matmul(inp, weight, bias, chips * groups_per_chip)
    return canonical_conv(inp, weight, bias, chips * groups_per_chip, conv_args)
