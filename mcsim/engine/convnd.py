"""Every torch convolution as the engine's one 2-D grouped convolution (docs/physics.md section 1).

The analog layer runs one code path, a grouped ``F.conv2d`` in canonical shapes
(:func:`mcsim.engine.conv.canonical_conv`); :class:`ConvView` brings the other convolutions to it
exactly, with the same matrix (rows in torch's ``(channel, kernel...)`` order) and the same numbers:

* ``Conv1d``: a ``Conv2d`` with a ``(1, k)`` kernel on a ``(1, L)`` image.
* ``Conv3d``: the depth taps fold into the channels. Output depth ``j`` reads ``kd`` input depth
  slices; they become the channels of an image of their own, ``(C * kd, H, W)`` (channel-major, so
  the weight ``(C_out, C_g, kd, kh, kw)`` is the view ``(C_out, C_g * kd, kh, kw)``: the same rows in
  the same order), and the output depths become the layer's tokens: rows of their own, each a read
  of the arrays with its own read noise (section 9 keys it by chip, image, token and bit), as the
  tokens of a Linear. Depth padding is zero slices (input level 0, as the conv's own padding).
  The depth taps of a channel are separate channels of the view, so a partition (section 6) may
  cut between them.
* ``ConvTranspose1d/2d/3d``: a transposed convolution is the ordinary convolution, stride 1, of its
  input with ``stride - 1`` zeros inserted between samples and ``dilation * (k - 1) - padding`` zeros
  around it (``output_padding`` more at the end), by the kernel with input and output channels
  swapped and the taps flipped. The rows that the inserted zeros drive carry no current: the matrix
  on the arrays is the transposed kernel, ``C_in/g * prod(k)`` rows per column, and a pass costs
  ``prod(stride)`` times the MVMs of the scatter form (each input pixel through the stored matrix,
  its outputs added digitally), which mcsim does not model.

Only ``padding_mode="zeros"`` is supported.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

#: the layers that go on crossbars
CROSSBAR_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def _spatial(v, d: int) -> tuple:
    return (v,) * d if isinstance(v, int) else tuple(v)


class ConvView:
    """How one torch convolution (``module``) runs as a 2-D convolution.

    ``kernel``: the 2-D kernel; ``conv_args``: its ``stride``/``padding``/``dilation``;
    :meth:`weight` maps the module's weight to the 2-D ``(C_out, C_in/g * kd, kh, kw)``;
    :meth:`to2d` and :meth:`from2d` map activations there and back.
    """

    def __init__(self, module: nn.modules.conv._ConvNd, name: str):
        if module.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode {module.padding_mode!r} is not supported")
        d = len(module.kernel_size)
        self.dims, self.transposed, self.groups = d, module.transposed, module.groups
        k, s, dil = module.kernel_size, _spatial(module.stride, d), _spatial(module.dilation, d)
        pad = module.padding if isinstance(module.padding, str) else _spatial(module.padding, d)
        self.insert: Optional[tuple[int, ...]] = None  # transposed: stride of the zero insertion
        self.edge: Optional[list[int]] = None  # F.pad of the spatial dims (transposed: may crop)
        if self.transposed:
            out_pad = _spatial(module.output_padding, d)
            self.insert = s
            lo = [dl * (kk - 1) - p for kk, dl, p in zip(k, dil, pad)]
            self.edge = [v for i in reversed(range(d)) for v in (lo[i], lo[i] + out_pad[i])]
            s, pad = (1,) * d, (0,) * d
        self.depth: Optional[tuple[int, int, int, int, int]] = None  # 3-D: (kd, stride, dilation, pad lo, hi)
        if d == 3:
            if pad == "same":
                total = dil[0] * (k[0] - 1)
                lo_hi = (total // 2, total - total // 2)
            else:
                lo_hi = (0, 0) if pad == "valid" else (pad[0], pad[0])
            self.depth = (k[0], s[0], dil[0], *lo_hi)
            k, s, dil = k[1:], s[1:], dil[1:]
            pad = pad if isinstance(pad, str) else pad[1:]
        elif d == 1:
            k, s, dil = (1, *k), (1, *s), (1, *dil)
            pad = pad if isinstance(pad, str) else (0, *pad)
        self.kernel: tuple[int, int] = tuple(k)
        self.conv_args = dict(stride=tuple(s), padding=pad if isinstance(pad, str) else tuple(pad), dilation=tuple(dil))

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """The module's weight as the 2-D convolution's ``(C_out, C_in/g * kd, kh, kw)``."""
        if self.transposed:  # (C_in, C_out/g, *k) -> (C_out, C_in/g, *k), taps flipped
            g = self.groups
            w = w.unflatten(0, (g, -1)).transpose(1, 2).flatten(0, 1).flip(list(range(2, w.dim())))
        if self.dims == 1:
            return w.unsqueeze(2)
        return w.flatten(1, 2) if self.dims == 3 else w

    def to2d(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(N, C, *spatial)`` -> the 2-D convolution's input ``(N * tokens, C', H, W)``, rows ordered
        (row of x, token), and the tokens per row of x (output depths of a Conv3d, else 1)."""
        if self.transposed:
            spatial = x.shape[2:]
            z = x.new_zeros(*x.shape[:2], *[(n - 1) * st + 1 for n, st in zip(spatial, self.insert)])
            z[(slice(None), slice(None), *[slice(None, None, st) for st in self.insert])] = x
            x = F.pad(z, self.edge)
        if self.dims == 1:
            return x.unsqueeze(2), 1
        if self.dims == 2:
            return x, 1
        kd, sd, dd, lo, hi = self.depth
        x = F.pad(x, (0, 0, 0, 0, lo, hi)) if lo or hi else x
        taps = x.unfold(2, dd * (kd - 1) + 1, sd)[..., ::dd]  # (N, C, D', H, W, kd)
        tokens = taps.shape[2]
        return taps.permute(0, 2, 1, 5, 3, 4).reshape(-1, x.shape[1] * kd, *x.shape[3:]), tokens

    def from2d(self, y: torch.Tensor, tokens: int) -> torch.Tensor:
        """The 2-D convolution's output back to the module's ``(N, C_out, *spatial)``."""
        if self.dims == 1:
            return y.squeeze(2)
        if self.dims == 2:
            return y
        return y.view(-1, tokens, *y.shape[1:]).transpose(1, 2).contiguous()


def conv_view(module: nn.Module, name: str) -> Optional[ConvView]:
    """The :class:`ConvView` of a convolution; None for a Linear."""
    return None if isinstance(module, nn.Linear) else ConvView(module, name)
