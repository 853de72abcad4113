"""Recurrent layers with their matrices on arrays: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (docs/physics.md 17).

:func:`rewrite_recurrent` replaces every such module by :class:`Recurrent`, which holds each of its
matrices as a Linear submodule named like torch's parameter: ``weight_ih_l0`` (input-hidden, with
``bias_ih_l0``), ``weight_hh_l0`` (hidden-hidden, with ``bias_hh_l0``), ``weight_hr_l0`` (an LSTM's
projection, ``proj_size > 0``), ``_reverse`` for the second direction. The engine's generic Linear
replacement then puts each matrix on its own arrays (``lstm.weight_hh_l0`` in ``layer_names`` and in
``hardware.layers``), programmed once per chip like any layer; the gates, the cell state and the
hidden state stay digital.

Per layer and direction, the input-hidden matrix reads every time step in one call (the input
sequence is known: the steps are tokens, each read on its own, its read noise keyed by the token);
the hidden-hidden matrix (and the projection) reads once per step, keyed by the step
(:func:`mcsim.engine.draws.read_noise`). The chips ride in the batch dim, so every call sees
batch-first ``(N, ...)`` activations, image-major as everywhere in the engine.

The gates' sigmoid and tanh: torch's CPU sigmoid rounds an element differently in its vector loop and
in the scalar loop that finishes a call (or each thread's share of it), so a chip's numbers would depend
on where its rows fall in the block. :func:`_sigmoid_` therefore calls it on a flat view cut into chunks
that run serially (fewer than ATen's 32,768-element grain) and hold a multiple of 64 elements (a whole
number of vector iterations; a flat tail is zero-padded): every element goes through the vector loop,
whatever the block, the batch or the thread count (``tests/test_recurrent.py``). tanh is
``2 sigmoid(2 x) - 1`` (torch 2.14's CPU tanh costs ~6x its sigmoid). An LSTM's four gates take one pass
over the step's ``(N, 4 H)`` pre-activations, the cell input's column scaled by 2 then mapped by
``2 s - 1`` (a step's elementwise work is small, so calls, not elements, cost).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from mcsim.engine.attention import _linear
from mcsim.engine.layers import AnalogLayer

DIGITAL_RECURRENCE = "gates, cell and hidden state (elementwise sigmoid, tanh, products): digital"


def _suffixes(m: nn.RNNBase) -> list[str]:
    """torch's parameter suffixes, per layer then direction: ``_l0``, ``_l0_reverse``, ``_l1``, ..."""
    dirs = ["", "_reverse"] if m.bidirectional else [""]
    return [f"_l{k}{d}" for k in range(m.num_layers) for d in dirs]


def matrix_names(m: nn.Module) -> list[str]:
    """The Linear submodules the rewrite of ``m`` holds, in their registration order (empty when ``m``
    is not a recurrent module the rewrite replaces)."""
    if not _replaced(m):
        return []
    kinds = ["ih", "hh"] + (["hr"] if getattr(m, "proj_size", 0) else [])
    return [f"weight_{kind}{s}" for s in _suffixes(m) for kind in kinds]


def _replaced(m: nn.Module) -> bool:
    """Whether ``m`` is an LSTM, GRU or RNN running torch's own forward (a subclass that overrides it
    is left alone: what it does with the weights is unknown)."""
    return (isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))
            and type(m).forward in (nn.LSTM.forward, nn.GRU.forward, nn.RNN.forward))


_SERIAL_ELEMENTS = 32768  # ATen runs an elementwise call of fewer elements in one serial loop (its grain)
_VECTOR_STEP = 64  # a multiple of the elements one iteration of a CPU vector loop takes (2 x 16 on AVX512)


def _sigmoid_(x: torch.Tensor) -> torch.Tensor:
    """``x.sigmoid_()``, every element through the vector loop of torch's CPU kernel (module docstring)."""
    if x.device.type != "cpu":
        return x.sigmoid_()
    flat = x.contiguous().view(-1)
    tail = flat.numel() % _VECTOR_STEP
    if tail:
        flat = torch.cat([flat, flat.new_zeros(_VECTOR_STEP - tail)])
    for chunk in flat.split(_SERIAL_ELEMENTS):
        chunk.sigmoid_()
    if flat.data_ptr() != x.data_ptr():
        x.copy_(flat[: x.numel()].view(x.shape))
    return x


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """``x.tanh_()`` as ``2 sigmoid(2 x) - 1`` through :func:`_sigmoid_`."""
    return _sigmoid_(x.mul_(2)).mul_(2).sub_(1)


class Recurrent(nn.Module):
    """``nn.LSTM``/``nn.GRU``/``nn.RNN`` (eval) with its matrices as Linear submodules.

    Same call and results as torch's module: ``forward(input, hx=None)`` returns ``(output, h_n)``
    (GRU, RNN) or ``(output, (h_n, c_n))`` (LSTM), for ``batch_first`` true or false, any number of
    layers, one or two directions, with or without biases, ``proj_size`` for an LSTM and ``tanh`` or
    ``relu`` for an RNN. Batched inputs only (the chips ride in the batch dim); a ``PackedSequence`` is
    refused.
    """

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.mode = rnn.mode  # LSTM, GRU, RNN_TANH, RNN_RELU
        self.num_layers, self.hidden_size = rnn.num_layers, rnn.hidden_size
        self.proj_size = getattr(rnn, "proj_size", 0)
        self.batch_first, self.directions = rnn.batch_first, 2 if rnn.bidirectional else 1
        self.suffixes = _suffixes(rnn)
        self._affine: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # an LSTM's gate scales (_gate_affine)
        for s in self.suffixes:
            for kind in ("ih", "hh", "hr"):
                if hasattr(rnn, f"weight_{kind}{s}"):
                    bias = getattr(rnn, f"bias_{kind}{s}", None) if rnn.bias and kind != "hr" else None
                    setattr(self, f"weight_{kind}{s}", _linear(getattr(rnn, f"weight_{kind}{s}").detach(), bias))

    def _gate_affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per LSTM gate column (i, f, g, o), the scale and shift of ``scale * sigmoid(scale * x) - shift``:
        a sigmoid for i, f and o, ``tanh = 2 sigmoid(2 x) - 1`` for g."""
        if self._affine is None or self._affine[0].dtype != like.dtype or self._affine[0].device != like.device:
            one = like.new_ones(self.hidden_size)
            self._affine = torch.cat([one, one, one * 2, one]), torch.cat([one * 0, one * 0, one, one * 0])
        return self._affine

    @staticmethod
    def _call(layer: nn.Module, x: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        return layer(x, step=step) if isinstance(layer, AnalogLayer) else layer(x)

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise ValueError(f"mcsim {self.mode}: packed sequences are not supported; pad the batch "
                             "(torch.nn.utils.rnn.pad_packed_sequence) and pass a tensor")
        if input.dim() != 3:
            raise ValueError(f"mcsim {self.mode}: batched (3-D) inputs only, got {input.dim()}-D: "
                             "the chips of a converted model ride in the batch dim")
        x = input if self.batch_first else input.transpose(0, 1)  # (N, T, features)
        h0, c0 = self._initial(x, hx)
        h_n, c_n = [], []
        for k in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                i = k * self.directions + d
                y, h, c = self._direction(x, self.suffixes[i], d == 1, h0[i], c0[i] if c0 is not None else None)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
        out = x if self.batch_first else x.transpose(0, 1)
        if self.mode == "LSTM":
            return out, (torch.stack(h_n), torch.stack(c_n))
        return out, torch.stack(h_n)

    def _initial(self, x: torch.Tensor, hx) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``h_0`` ``(layers * directions, N, H_out)`` and an LSTM's ``c_0`` (else None); zeros when not given."""
        n, count = x.shape[0], self.num_layers * self.directions
        h_out = self.proj_size or self.hidden_size
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = x.new_zeros(count, n, h_out)
            return h0, (x.new_zeros(count, n, self.hidden_size) if lstm else None)
        return (hx[0], hx[1]) if lstm else (hx, None)

    def _direction(self, x: torch.Tensor, s: str, reverse: bool, h: torch.Tensor, c: Optional[torch.Tensor]):
        """One layer in one direction over ``x`` ``(N, T, F)``: its outputs ``(N, T, H_out)``, last h and c."""
        steps = x.shape[1]
        gx = self._call(getattr(self, f"weight_ih{s}"), x)  # every step at once: steps are tokens
        hh = getattr(self, f"weight_hh{s}")
        hr = getattr(self, f"weight_hr{s}", None)
        ys: list[Optional[torch.Tensor]] = [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            gh = self._call(hh, h, t)
            h, c = self._cell(gx[:, t], gh, h, c)
            if hr is not None:
                h = self._call(hr, h, t)
            ys[t] = h
        return torch.stack(ys, 1), h, c

    def _cell(self, gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: Optional[torch.Tensor]):
        """torch's cell equations on the two matmuls' outputs (biases included; ``gh`` is the call's own
        buffer): the new h (before an LSTM's projection) and c."""
        if self.mode == "LSTM":  # the four gates in one pass per step (module docstring)
            scale, shift = self._gate_affine(gh)
            i, f, g, o = _sigmoid_(gh.add_(gx).mul_(scale)).mul_(scale).sub_(shift).chunk(4, -1)
            c = f.mul(c).add_(i.mul_(g))
            return o.mul_(_tanh_(c.clone())), c
        if self.mode == "GRU":
            xn, hn = gx[..., 2 * self.hidden_size:], gh[..., 2 * self.hidden_size:]
            r, z = _sigmoid_(gx[..., : 2 * self.hidden_size] + gh[..., : 2 * self.hidden_size]).chunk(2, -1)
            n = _tanh_(xn + r * hn)
            return n + z * (h - n), None
        pre = gh.add_(gx)
        return (_tanh_(pre) if self.mode == "RNN_TANH" else pre.relu_()), None


def rewrite_recurrent(model: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` by its :class:`Recurrent` equivalent;
    returns the replaced modules' names."""
    done = []
    for name, m in list(model.named_modules()):
        if not _replaced(m) or not name:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Recurrent(m))
        done.append(name)
    if _replaced(model):
        raise ValueError(f"the model itself is a {type(model).__name__}: wrap it in a module to convert it")
    return done
