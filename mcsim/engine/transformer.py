"""torch's Transformer layers with their Linears on arrays (docs/physics.md section 1).

``nn.TransformerEncoderLayer`` hands every weight to a fused kernel (``torch._transformer_encoder_layer_fwd``)
whenever it can, in eval, and ``nn.TransformerEncoder`` packs padded batches into nested tensors
first; neither calls its Linears as modules then. :func:`rewrite_transformers` gives each of these
modules (and ``nn.TransformerDecoderLayer``, for its ``batch_first=False`` views) a forward that runs
torch's own unfused path, which calls every projection and feed-forward Linear as a module: the attention
through mcsim's :class:`~mcsim.engine.attention.MultiheadAttention` (rewritten first), ``linear1`` and
``linear2`` through the engine's Linear replacement. The module keeps its submodules, its settings and
its class (a subclass): only the forward changes. ``nn.Transformer`` and ``nn.TransformerDecoder`` call
their parts as modules and stay as they are.

* ``batch_first=False``: a layer runs on batch-first views, ``(N, L, E)``, so that its Linears see
  the chips in the leading dim, as every analog layer needs; outputs go back to ``(L, N, E)``.
* The fused path and the unfused one are the same math; they differ in float rounding only
  (``tests/test_zoo.py`` bounds it at 1e-5).
* Where torch's encoder would run nested tensors (eval, ``enable_nested_tensor``, a left-aligned
  ``src_key_padding_mask`` and no ``mask``), its padded positions come out zero: so they do here.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.transformer import _detect_is_causal_mask, _get_seq_len

from mcsim.engine.attention import MultiheadAttention


def _to_batch_first(x: Tensor, batch_first: bool) -> Tensor:
    return x if batch_first or x.dim() != 3 else x.transpose(0, 1)


def _canonical(mask: Optional[Tensor], name: str, x: Tensor, other: Optional[Tensor] = None,
               other_name: str = "") -> Optional[Tensor]:
    """torch's ``F._canonical_mask`` as its Transformer modules call it (a float mask of ``x``'s dtype)."""
    return F._canonical_mask(mask=mask, mask_name=name, other_type=F._none_or_dtype(other), other_name=other_name,
                             target_type=x.dtype, check_other=bool(other_name))


def _attend(attn: MultiheadAttention, x: Tensor, mem: Tensor, mask, key_padding_mask, is_causal) -> Tensor:
    """The layer's attention block on batch-first activations (torch's ``_sa_block``/``_mha_block``)."""
    return attn.batch_first_forward(x, mem, mem, key_padding_mask=key_padding_mask, need_weights=False,
                                    attn_mask=mask, is_causal=is_causal)[0]


class EncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` (eval) on its unfused path (module docstring)."""

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        src_key_padding_mask = _canonical(src_key_padding_mask, "src_key_padding_mask", src, src_mask, "src_mask")
        src_mask = _canonical(src_mask, "src_mask", src)
        first = self.self_attn.batch_first
        x = _to_batch_first(src, first)

        def sa(h):
            return self.dropout1(_attend(self.self_attn, h, h, src_mask, src_key_padding_mask, is_causal))

        if self.norm_first:
            x = x + sa(self.norm1(x))
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + sa(x))
            x = self.norm2(x + self._ff_block(x))
        return _to_batch_first(x, first)


class DecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` (eval), batch-first inside (module docstring)."""

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        first = self.self_attn.batch_first
        x, mem = _to_batch_first(tgt, first), _to_batch_first(memory, first)

        def sa(h):
            return self.dropout1(_attend(self.self_attn, h, h, tgt_mask, tgt_key_padding_mask, tgt_is_causal))

        def mha(h):
            return self.dropout2(_attend(self.multihead_attn, h, mem, memory_mask, memory_key_padding_mask,
                                         memory_is_causal))

        if self.norm_first:
            x = x + sa(self.norm1(x))
            x = x + mha(self.norm2(x))
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + sa(x))
            x = self.norm2(x + mha(x))
            x = self.norm3(x + self._ff_block(x))
        return _to_batch_first(x, first)


class Encoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` (eval): its layers in turn, unfused (module docstring)."""

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        src_key_padding_mask = _canonical(src_key_padding_mask, "src_key_padding_mask", src, mask, "mask")
        mask = _canonical(mask, "mask", src)
        batch_first = self.layers[0].self_attn.batch_first
        is_causal = _detect_is_causal_mask(mask, is_causal, _get_seq_len(src, batch_first))
        out = src
        for mod in self.layers:
            out = mod(out, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
        if self._nested(src, mask, src_key_padding_mask):  # torch's to_padded_tensor(0.0)
            out = out.masked_fill(src_key_padding_mask.ne(0).unsqueeze(-1), 0.0)
        return self.norm(out) if self.norm is not None else out

    def _nested(self, src: Tensor, mask: Optional[Tensor], key_padding_mask: Optional[Tensor]) -> bool:
        """Whether torch's encoder would run nested tensors here (its fast-path conditions in
        inference, where the converted model always runs: no grad)."""
        return (torch.backends.mha.get_fastpath_enabled() and getattr(self, "use_nested_tensor", False)
                and not self.layers[0].training and src.dim() == 3 and key_padding_mask is not None
                and mask is None and not torch.is_autocast_enabled()
                and (not getattr(self, "mask_check", True)
                     or bool(torch._nested_tensor_from_mask_left_aligned(src, key_padding_mask.logical_not()))))


_REWRITES = {nn.TransformerEncoderLayer: EncoderLayer, nn.TransformerDecoderLayer: DecoderLayer,
             nn.TransformerEncoder: Encoder}
TRANSFORMER_MODULES = tuple(_REWRITES.values())


def rewrite_transformers(model: nn.Module) -> list[str]:
    """Give, in place, every torch Transformer encoder and encoder/decoder layer its unfused forward (module
    docstring); returns their names. Run after :func:`~mcsim.engine.attention.rewrite_attention`.

    Raises:
        ValueError: a subclass with a forward of its own (what it does with the weights is unknown),
            or a layer whose attention was not rewritten; the message names the module.
    """
    done = []
    for name, m in model.named_modules():
        base = next((b for b in _REWRITES if isinstance(m, b)), None)
        if base is None or isinstance(m, TRANSFORMER_MODULES):
            continue
        label = name or "<root>"
        if type(m).forward is not base.forward:
            raise ValueError(f"module {label!r} is a {type(m).__name__} with a forward of its own: mcsim cannot tell "
                             "which weights it hands to a fused kernel")
        attns = [getattr(m, a) for a in ("self_attn", "multihead_attn") if hasattr(m, a)]
        if not all(isinstance(a, MultiheadAttention) for a in attns):
            raise ValueError(f"module {label!r}: its attention is not torch's nn.MultiheadAttention, so mcsim cannot "
                             "put its projections on arrays")
        m.__class__ = _REWRITES[base]
        done.append(name)
    return done
