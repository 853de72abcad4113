"""Device errors: docs/physics.md section 4. Pure functions of normalized conductances (Gmax = 1).

Programming errors are drawn once per chip, read noise at every MVM (the engine draws it in
output space from :func:`read_variance`), drift applies a per-device exponent ``nu``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mcsim.hardware import Drift, Hardware, ProgrammingError, ReadNoise


@dataclass(frozen=True)
class DeviceFit:
    """A measured ``sigma(G)`` curve in physical units, with its source, physical Gmax and the
    conductance (or current) range its data cover: outside ``g_range`` the curve is extrapolated."""

    source: str
    gmax: float  # physical Gmax in the curve's unit
    unit: str
    sigma: Callable[[torch.Tensor], torch.Tensor]  # physical sigma at physical G
    g_range: tuple[float, float]  # lowest and highest measured G, in ``unit``

    def normalized_sigma(self, g: torch.Tensor) -> torch.Tensor:
        """``sigma_phys(G * Gmax) / Gmax``: the curve on normalized conductances."""
        return self.sigma(g * self.gmax).clamp(min=0) / self.gmax


def _saturating(a: float, b: float):
    return lambda i: a * (1 - torch.exp(-i / b))


# SONOS cells are read in subthreshold from about 0 nA (erased) up to Imax = 1.6 uA, the range both
# SONOS fits were measured over; CrossSim suggests an on/off ratio of 1e7 for them, and the study's
# bit line currents (its Fig. 20) assume an infinite one.
_SONOS_RANGE = (0.0, 1600.0)

PROGRAMMING_FITS = {
    # 40 nm SONOS charge-trap cell read in subthreshold, at programming time: sigma_I = A (1 - exp(-I/B)).
    "sonos": DeviceFit("Agrawal et al., IEDM 2022, Fig. 10(a), t = 0", 1600.0, "nA",
                       _saturating(19.88665, 176.3115), _SONOS_RANGE),
    # The fit the study itself used (Xiao et al., IEEE CAS Magazine 2022, simulated with CrossSim v2,
    # whose SONOS programming error model is this one: sigma_I = B (1 - exp(-A I)), A = 0.00188704
    # /nA, B = 39.5656 nA): the earlier 40 nm SONOS array of Xiao et al., "An Accurate,
    # Error-Tolerant, and Energy-Efficient Neural Network Inference Engine Based on SONOS Analog
    # Memory", IEEE TCAS-I 69(4), 2022, Fig. 4(d). About 2x the IEDM 2022 sigma at Imax.
    "sonos_tcas": DeviceFit("Xiao et al., IEEE TCAS-I 69(4), 2022, Fig. 4(d)", 1600.0, "nA",
                            _saturating(39.5656, 1 / 0.00188704), _SONOS_RANGE),
    # PCM, quadratic fit of programming error vs target conductance (0.25-25 uS).
    "pcm": DeviceFit(
        "Joshi et al., Nature Communications 11, 2473 (2020), Fig. 3(b)", 25.0, "uS",
        lambda g: -0.00178767 * g**2 + 0.07585724 * g + 0.28638599, (0.25, 25.0),
    ),
    # Multilevel RRAM programmed with the IGVVA-100 algorithm, linear fit (50-225 uS).
    "rram": DeviceFit("Milo et al., IRPS 2021, Fig. 4 (IGVVA-100)", 225.0, "uS",
                      lambda g: -0.009107 * g + 4.782321, (50.0, 225.0)),
}

READ_FITS = {
    "sonos": DeviceFit("Agrawal et al., IEDM 2022, Fig. 11(b)", 1600.0, "nA",
                       _saturating(12.58037, 215.36557), _SONOS_RANGE),
}


def fit_range_warning(name: str, fit: DeviceFit, gmin: float, setting: str = "on_off_ratio") -> Optional[str]:
    """A message when normalized conductances down to ``gmin`` (up to Gmax = 1) leave the range the
    fit was measured over, else None. ``setting`` names what put Gmin there, for the message."""
    lo, hi = fit.g_range
    g_lo = gmin * fit.gmax
    if g_lo >= lo * (1 - 1e-9) and fit.gmax <= hi * (1 + 1e-9):
        return None
    msg = (f"device model '{name}' ({fit.source}) was measured over {lo:g}-{hi:g} {fit.unit}, but "
           f"{setting} puts Gmin at {g_lo:.3g} {fit.unit} (Gmax {fit.gmax:g} {fit.unit}): its sigma there is "
           "extrapolated")
    if lo > 0:
        msg += f"; an on/off ratio of at most {fit.gmax / lo:g} keeps Gmin inside the measured range"
    return msg


def hardware_warnings(hw: Hardware) -> list[str]:
    """Warnings for device fits used outside their measured range (programming error, read noise)."""
    ratio = "on/off ratio " + ("infinite" if hw.on_off_ratio is None else f"{hw.on_off_ratio:g}")
    out = []
    for name, fits in ((hw.error.model, PROGRAMMING_FITS), (hw.read_noise.model, READ_FITS)):
        if name in fits and (msg := fit_range_warning(name, fits[name], hw.gmin, ratio)):
            out.append(msg)
    return out


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
