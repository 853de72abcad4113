"""Attention on crossbars: its weight matrices are analog, its activation-by-activation products digital.

An attention block multiplies weights by activations in its projections (q, k, v and the output
projection: ordinary Linear layers, so they go on crossbars like any other) and activations by
activations in the attention itself (``q k^T``, ``softmax(.) v``): no stored matrix, nothing to
program, so that part stays digital and exact (docs/physics.md section 1), like the softmax, the
normalizations and the dropout (off in eval).

torch's and torchvision's attention modules do not call their projections as modules: they hand the
weight tensors to a function (``F.multi_head_attention_forward``, torchvision's
``shifted_window_attention``). :func:`rewrite_attention` therefore replaces them, before BatchNorm
folding and layer replacement, by equivalents here that call ``self.<proj>(x)``, with torch's math
otherwise line for line, so the engine's generic Linear replacement puts every projection on arrays:

* ``nn.MultiheadAttention`` -> :class:`MultiheadAttention`: ``in_proj`` (the packed ``(3E, E)``
  matrix, one layer as torch stores it) or ``q_proj``/``k_proj``/``v_proj`` (when ``kdim``/``vdim``
  differ from ``embed_dim``), and ``out_proj``.
* torchvision's ``ShiftedWindowAttention`` (Swin) and ``ShiftedWindowAttentionV2`` (Swin V2) ->
  :class:`WindowAttention`: ``qkv`` and ``proj``. V2's relative position bias comes from a small
  MLP of a constant table, independent of the input: it is evaluated once, digitally, at conversion.

The chips ride in the batch dim, so projections always see batch-first activations ``(N, L, E)``.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

DIGITAL_ATTENTION = ("attention scores (q k^T) and attention-weighted values multiply activations by activations "
                     "(no stored weights), and softmax: digital")


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (eval) with its projections as Linear submodules.

    Same call and results as torch's module: ``forward(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False)`` returns
    ``(output, weights or None)``, for ``batch_first`` true or false. Batched inputs only (the chips
    ride in the batch dim).
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.embed_dim, self.kdim, self.vdim = mha.embed_dim, mha.kdim, mha.vdim
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.batch_first, self.dropout, self.add_zero_attn = mha.batch_first, mha.dropout, mha.add_zero_attn
        self.packed = mha._qkv_same_embed_dim
        e, b = self.embed_dim, mha.in_proj_bias
        if self.packed:
            self.in_proj = _linear(mha.in_proj_weight, b)
        else:
            biases = b.chunk(3) if b is not None else (None,) * 3
            self.q_proj = _linear(mha.q_proj_weight, biases[0])
            self.k_proj = _linear(mha.k_proj_weight, biases[1])
            self.v_proj = _linear(mha.v_proj_weight, biases[2])
        self.out_proj = mha.out_proj
        self.bias_k, self.bias_v = mha.bias_k, mha.bias_v
        assert e == self.num_heads * self.head_dim

    def _project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Batch-first ``(N, L, E)`` inputs -> q, k, v ``(N, L, E)``, projections run as modules."""
        if not self.packed:
            return self.q_proj(q), self.k_proj(k), self.v_proj(v)
        if q is k and k is v:  # self-attention: one pass of the packed matrix
            return self.in_proj(q).chunk(3, dim=-1)
        # Otherwise one pass over the inputs side by side along the tokens; each keeps its own third.
        parts = [q, k] if k is v else [q, k, v]
        out = self.in_proj(torch.cat(parts, dim=1)).split([p.shape[1] for p in parts], dim=1)
        e = self.embed_dim
        qp, kp = out[0][..., :e], out[1][..., e : 2 * e]
        vp = (out[1] if k is v else out[2])[..., 2 * e :]
        return qp, kp, vp

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        if query.dim() != 3:
            raise ValueError(f"mcsim MultiheadAttention: batched (3-D) inputs only, got {query.dim()}-D: "
                             "the chips of a converted model ride in the batch dim")
        if not self.batch_first:  # (L, N, E) -> (N, L, E): the projections' leading dim must be the batch
            q_t = query.transpose(0, 1)
            k_t = q_t if key is query else key.transpose(0, 1)
            value = k_t if value is key else (q_t if value is query else value.transpose(0, 1))
            query, key = q_t, k_t
        out, weights = self.batch_first_forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                                average_attn_weights, is_causal)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def batch_first_forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                            attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        """:meth:`forward` on batch-first ``(N, L, E)`` inputs, whatever ``batch_first`` says; returns
        ``(N, L, E)`` (torch's Transformer layers run on such views, :mod:`mcsim.engine.transformer`)."""
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        q, k, v = self._project(query, key, value)
        return _attend(self, q, k, v, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _attend(m: MultiheadAttention, q, k, v, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
    """torch's ``F.multi_head_attention_forward`` after the in-projection (eval: no dropout), on
    batch-first ``q (N, L, E)``, ``k, v (N, S, E)``; returns ``(N, L, E)`` and the weights or None."""
    bsz, tgt_len, embed_dim = q.shape
    heads, head_dim = m.num_heads, m.head_dim
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=q.dtype, check_other=False)
        if key_padding_mask is not None:
            is_causal = False
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)
    if m.bias_k is not None and m.bias_v is not None:
        k = torch.cat([k, m.bias_k.transpose(0, 1).expand(bsz, 1, -1)], dim=1)
        v = torch.cat([v, m.bias_v.transpose(0, 1).expand(bsz, 1, -1)], dim=1)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    # torch's layout (N * heads, L, head_dim), batch-major like its (L, N * heads, head_dim).transpose(0, 1)
    q = q.reshape(bsz, tgt_len, heads, head_dim).transpose(1, 2).reshape(bsz * heads, tgt_len, head_dim)
    k = k.reshape(bsz, k.shape[1], heads, head_dim).transpose(1, 2).reshape(bsz * heads, -1, head_dim)
    v = v.reshape(bsz, v.shape[1], heads, head_dim).transpose(1, 2).reshape(bsz * heads, -1, head_dim)
    if m.add_zero_attn:
        zeros = torch.zeros((bsz * heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    src_len = k.size(1)
    if key_padding_mask is not None:
        key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
                            .reshape(bsz * heads, 1, src_len))
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(head_dim))
        if attn_mask is not None:
            w = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            w = torch.bmm(q_scaled, k.transpose(-2, -1))
        w = F.softmax(w, dim=-1)
        out = torch.bmm(w, v).view(bsz, heads, tgt_len, head_dim).transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
        w = w.view(bsz, heads, tgt_len, src_len)
        return m.out_proj(out), (w.mean(dim=1) if average_attn_weights else w)
    if attn_mask is not None:
        if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.view(bsz, heads, -1, src_len)
    q, k, v = (t.view(bsz, heads, -1, head_dim) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal)
    return m.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)), None


class WindowAttention(nn.Module):
    """torchvision's Swin ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` (eval), calling its
    ``qkv`` and ``proj`` Linears as modules; otherwise torchvision's ``shifted_window_attention``.

    V2's relative position bias (``16 * sigmoid(cpb_mlp(table))``) depends on the weights only: it is
    computed once here, digitally, and kept as a buffer.
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.window_size, self.shift_size = list(attn.window_size), list(attn.shift_size)
        self.num_heads = attn.num_heads
        self.qkv, self.proj = attn.qkv, attn.proj
        v2 = hasattr(attn, "logit_scale")
        if v2 and attn.qkv.bias is not None:  # V2 zeroes the key bias at every call: zero it once
            self.qkv = copy.deepcopy(attn.qkv)
            with torch.no_grad():
                n = self.qkv.bias.numel() // 3
                self.qkv.bias[n : 2 * n].zero_()
        with torch.no_grad():
            self.register_buffer("relative_position_bias", attn.get_relative_position_bias().detach().clone())
        self.logit_scale = attn.logit_scale if v2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``: torchvision 0.29's ``shifted_window_attention``, eval."""
        window_size, num_heads = self.window_size, self.num_heads
        B, H, W, C = x.shape
        pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
        pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, pad_H, pad_W, _ = x.shape
        shift_size = self.shift_size.copy()
        if window_size[0] >= pad_H:
            shift_size[0] = 0
        if window_size[1] >= pad_W:
            shift_size[1] = 0
        if sum(shift_size) > 0:
            x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
        num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
        x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
        qkv = self.qkv(x)  # on arrays: (B * windows, tokens, 3C), batch-major
        qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.logit_scale is not None:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            q = q * (C // num_heads) ** -0.5
            attn = q.matmul(k.transpose(-2, -1))
        attn = attn + self.relative_position_bias
        if sum(shift_size) > 0:
            attn_mask = _shift_mask(x, pad_H, pad_W, window_size, shift_size, num_windows)
            attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
            attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, num_heads, x.size(1), x.size(1))
        attn = F.softmax(attn, dim=-1)
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
        x = self.proj(x)  # on arrays
        x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
        if sum(shift_size) > 0:
            x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


def _shift_mask(x, pad_H, pad_W, window_size, shift_size, num_windows):
    attn_mask = x.new_zeros((pad_H, pad_W))
    h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
    w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


ATTENTION_MODULES = (MultiheadAttention, WindowAttention)


def _swin_classes() -> tuple[type, ...]:
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return ShiftedWindowAttention, ShiftedWindowAttentionV2


def _replacement(m: nn.Module) -> Optional[type]:
    """The mcsim equivalent of ``m``, when ``m`` runs its original forward (a subclass that overrides
    it is left alone: what it does with the weights is unknown)."""
    if isinstance(m, nn.MultiheadAttention) and type(m).forward is nn.MultiheadAttention.forward:
        return MultiheadAttention
    for cls in _swin_classes():
        if type(m) is cls:
            return WindowAttention
    return None


def projection_names(m: nn.Module) -> tuple[list[str], list[str]]:
    """The Linear submodules the rewrite of ``m`` adds (``out_proj``, ``qkv`` and ``proj`` exist already),
    and the submodules it drops (Swin V2's ``cpb_mlp``, evaluated once at conversion)."""
    cls = _replacement(m)
    if cls is MultiheadAttention:
        return (["in_proj"] if m._qkv_same_embed_dim else ["q_proj", "k_proj", "v_proj"]), []
    if cls is WindowAttention and hasattr(m, "cpb_mlp"):
        return [], ["cpb_mlp"]
    return [], []


def rewrite_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every attention module whose projections are used as tensors by its mcsim
    equivalent (module docstring); returns the replaced modules' names."""
    done = []
    for name, m in list(model.named_modules()):
        cls = _replacement(m)
        if cls is None or not name:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, cls(m))
        done.append(name)
    if _replacement(model) is not None:
        raise ValueError(f"the model itself is a {type(model).__name__}: wrap it in a module to convert it")
    return done
