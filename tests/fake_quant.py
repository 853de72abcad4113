"""An independent fake-quantized reference for one analog layer (docs/physics.md sections 2 and 5),
written from the spec: per-layer max-abs weight scale with 127 levels a sign, inputs on 255 (or
signed 127) levels over the calibrated range. Shared by the per-layer checks of other layer types."""
import torch


def layer_io(analog, x: torch.Tensor) -> dict:
    """Each analog layer's input and output in one pass of ``analog`` (1 chip) on ``x``: name -> (in, out)."""
    seen = {}
    hooks = [analog.net.get_submodule(n).register_forward_hook(
        lambda _m, inp, out, n=n: seen.__setitem__(n, (inp[0].clone(), out.clone()))) for n in analog.layer_names]
    try:
        analog(x, image_ids=torch.arange(len(x)))
    finally:
        for h in hooks:
            h.remove()
    return seen


def fake_quantized(weight: torch.Tensor, inp: torch.Tensor, calibration: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit weight and input, each quantized and scaled back (float64 rounding of the weight: exact ties)."""
    w = weight.detach().double()
    w_max = w.abs().max()
    wq = (torch.round(w / w_max * 127).clamp(-127, 127) * w_max / 127).float()
    x_range, signed = calibration["x_range"], calibration["signed"]
    n_max = 127 if signed else 255
    xq = torch.round(inp / x_range * n_max).clamp(-n_max if signed else 0, n_max) * x_range / n_max
    return wq, xq
