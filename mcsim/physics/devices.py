"""Device errors: MODEL.md section 4. Pure functions of normalized conductances (Gmax = 1).

Programming errors are drawn once per chip, read noise at every MVM (the engine draws it in
output space from :func:`read_variance`), drift applies a per-device exponent ``nu``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from mcsim.hardware import Drift, ProgrammingError, ReadNoise


@dataclass(frozen=True)
class DeviceFit:
    """A measured ``sigma(G)`` curve in physical units, with its source and physical Gmax."""

    source: str
    gmax: float  # physical Gmax in the curve's unit
    unit: str
    sigma: Callable[[torch.Tensor], torch.Tensor]  # physical sigma at physical G

    def normalized_sigma(self, g: torch.Tensor) -> torch.Tensor:
        """``sigma_phys(G * Gmax) / Gmax``: the curve on normalized conductances."""
        return self.sigma(g * self.gmax).clamp(min=0) / self.gmax


def _saturating(a: float, b: float):
    return lambda i: a * (1 - torch.exp(-i / b))


PROGRAMMING_FITS = {
    # 40 nm SONOS charge-trap cell read in subthreshold, at programming time: sigma_I = A (1 - exp(-I/B)).
    "sonos": DeviceFit("Agrawal et al., IEDM 2022, Fig. 10(a), t = 0", 1600.0, "nA", _saturating(19.88665, 176.3115)),
    # PCM, quadratic fit of programming error vs target conductance (0.25-25 uS).
    "pcm": DeviceFit(
        "Joshi et al., Nature Communications 11, 2473 (2020), Fig. 3(b)", 25.0, "uS",
        lambda g: -0.00178767 * g**2 + 0.07585724 * g + 0.28638599,
    ),
    # Multilevel RRAM programmed with the IGVVA-100 algorithm, linear fit (50-225 uS).
    "rram": DeviceFit("Milo et al., IRPS 2021, Fig. 4 (IGVVA-100)", 225.0, "uS", lambda g: -0.009107 * g + 4.782321),
}

READ_FITS = {
    "sonos": DeviceFit("Agrawal et al., IEDM 2022, Fig. 11(b)", 1600.0, "nA", _saturating(12.58037, 215.36557)),
}


def _sigma(g: torch.Tensor, model: str, sigma: float, fits: dict, scale: float = 1.0) -> torch.Tensor:
    if model == "independent":
        return torch.full_like(g, sigma)
    if model == "proportional":
        return sigma * g.abs()
    return scale * fits[model].normalized_sigma(g)


def program(g: torch.Tensor, err: ProgrammingError, eps: torch.Tensor, gmin: float) -> torch.Tensor:
    """Programmed conductances ``G' = G + sigma(G) * eps`` (state-independent: sigma; proportional:
    ``sigma * G``; device models: their fitted curve), clipped to ``[Gmin, Gmax]`` unless disabled."""
    if err.model == "none":
        return g
    out = g + _sigma(g, err.model, err.sigma, PROGRAMMING_FITS, err.scale) * eps
    return out.clamp(gmin, 1.0) if err.clip else out


def read_variance(g: torch.Tensor, noise: ReadNoise) -> torch.Tensor:
    """Per-device read-noise variance ``var(dG)``; one column's output noise is
    ``sum_j v_j**2 * var(dG_j)`` (section 4), which the engine draws in output space."""
    return _sigma(g, noise.model, noise.sigma, READ_FITS) ** 2


def drift(g: torch.Tensor, nu: torch.Tensor, d: Drift) -> torch.Tensor:
    """``G(t) = G0 * (t / t0) ** (-nu)`` with ``nu`` drawn per device."""
    return g * torch.exp(-nu * math.log(d.time_s / d.t0_s))
