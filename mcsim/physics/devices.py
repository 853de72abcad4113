"""Device errors: docs/physics.md sections 4 and 13. Pure functions of normalized conductances (Gmax = 1).

Programming errors are drawn once per chip, read noise at every MVM (the engine draws it in
output space from :func:`read_variance`), drift applies a per-device exponent ``nu``. Measured
tables (section 13.1) and a user's own function (13.2) are programming models like the fits.
"""
from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mcsim.hardware import Drift, Hardware, ProgrammingError, ReadNoise
from mcsim.physics import device_tables


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
    """Warnings for device fits and measured tables used outside their measured range."""
    ratio = "on/off ratio " + ("infinite" if hw.on_off_ratio is None else f"{hw.on_off_ratio:g}")
    out = []
    for name, fits in ((hw.error.model, PROGRAMMING_FITS), (hw.read_noise.model, READ_FITS)):
        if name in fits and (msg := fit_range_warning(name, fits[name], hw.gmin, ratio)):
            out.append(msg)
    for field, setting in (("error", hw.error), ("read_noise", hw.read_noise), ("drift", hw.drift)):
        if setting.model == "table" and (msg := device_tables.range_warning(field, setting, hw.gmin)):
            out.append(msg)
    return out


def _sigma(g: torch.Tensor, model: str, sigma: float, fits: dict, scale: float = 1.0) -> torch.Tensor:
    if model == "independent":
        return torch.full_like(g, sigma)
    if model == "proportional":
        return sigma * g.abs()
    return scale * fits[model].normalized_sigma(g)


@functools.lru_cache(maxsize=16)
def user_function(ref: str) -> Callable:
    """The user's device function ``'package.module:function'`` (section 13.2)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def perturb(g: torch.Tensor, err: ProgrammingError, eps: torch.Tensor, gmin: float) -> torch.Tensor:
    """Programmed conductances before clipping: ``G + sigma(G) * eps`` (state-independent: sigma;
    proportional: ``sigma * G``; device models: their fitted curve), a measured table's
    ``G + mu(G) + sigma(G) * eps`` (section 13.1), or the user's ``fn(G, eps, gmin)`` (13.2)."""
    if err.model == "none":
        return g
    if err.model == "factory":
        out = user_function(err.factory)(g, eps, gmin)
        if not isinstance(out, torch.Tensor) or out.shape != g.shape:
            raise ValueError(f"error.factory: {err.factory!r} must return a tensor of the targets' shape "
                             f"{tuple(g.shape)}, not {getattr(out, 'shape', type(out).__name__)}")
        return out.to(g.dtype)
    if err.model == "table":
        mu = device_tables.curve(err, "mu")
        return (g if mu is None else g + mu(g)) + err.scale * device_tables.curve(err, "sigma")(g) * eps
    return g + _sigma(g, err.model, err.sigma, PROGRAMMING_FITS, err.scale) * eps


def clip(g: torch.Tensor, err: ProgrammingError, gmin: float) -> torch.Tensor:
    """Conductances clipped to ``[Gmin, Gmax]`` unless ``error.clip`` is off (section 4)."""
    return g.clamp(gmin, 1.0) if err.clip else g


def program(g: torch.Tensor, err: ProgrammingError, eps: torch.Tensor, gmin: float) -> torch.Tensor:
    """Programmed conductances: :func:`perturb`, then :func:`clip` (no error model: the targets)."""
    if err.model == "none":
        return g
    return clip(perturb(g, err, eps, gmin), err, gmin)


def _pcm_read_sigma(g: torch.Tensor) -> torch.Tensor:
    # The 1/f read-noise coefficient of PCM, Q_s(G) = min(0.0088 / max(G**0.65, 1e-3), 0.2) relative
    # to G (Nandakumar et al., ICECS 2019; as aihwkit's PCMLikeNoiseModel, docs/physics.md 13.5).
    return g.abs() * (0.0088 / g.abs().pow(0.65).clamp(min=1e-3)).clamp(max=0.2)


def read_growth(noise: ReadNoise, time_s: Optional[float]) -> float:
    """``sqrt(log((t + t_read) / (2 t_read)))``: 1/f read noise accumulated since programming
    (section 13.5), 1 when the read noise is constant in time (``t_read_s`` null)."""
    if noise.t_read_s is None:
        return 1.0
    if time_s is None:
        raise ValueError("read_noise.t_read_s: read noise growing with time needs the time since "
                         "programming (drift.time_s)")
    return math.sqrt(math.log((time_s + noise.t_read_s) / (2 * noise.t_read_s)))


def read_variance(g: torch.Tensor, noise: ReadNoise, time_s: Optional[float] = None) -> torch.Tensor:
    """Per-device read-noise variance ``var(dG)`` at ``time_s`` since programming (the hardware's
    ``drift.time_s``; needed when ``read_noise.t_read_s`` is set); one column's output noise is
    ``sum_j v_j**2 * var(dG_j)`` (section 4), which the engine draws in output space."""
    if noise.model == "pcm":
        sigma = _pcm_read_sigma(g)
    elif noise.model == "table":
        sigma = device_tables.curve(noise, "sigma_read")(g)
    else:
        sigma = _sigma(g, noise.model, noise.sigma, READ_FITS)
    growth = read_growth(noise, time_s)
    return (sigma * growth) ** 2 if growth != 1.0 else sigma**2


def nu_moments(g: torch.Tensor, d: Drift) -> tuple[torch.Tensor, torch.Tensor]:
    """Drift exponent mean and spread at target conductances ``g`` (section 13.5): a measured table,
    or the PCM fit of Nandakumar et al., ICECS 2019 (as aihwkit's PCMLikeNoiseModel):
    ``nu_mean = clip(-0.0155 ln G + 0.0244, 0.049, 0.1)``, ``nu_std = clip(-0.0125 ln G - 0.0059, 0.008, 0.045)``."""
    if d.model == "table":
        return device_tables.curve(d, "nu_mean")(g), device_tables.curve(d, "nu_std")(g)
    if d.model == "pcm":
        ln = g.abs().clamp(min=1e-7).log()
        return (-0.0155 * ln + 0.0244).clamp(0.049, 0.1), (-0.0125 * ln - 0.0059).clamp(0.008, 0.045)
    raise ValueError(f"drift.model: {d.model!r} has constant nu (drift.nu_mean, drift.nu_std)")


def drift(g: torch.Tensor, nu: torch.Tensor, d: Drift) -> torch.Tensor:
    """``G(t) = G0 * (t / t0) ** (-nu)`` with ``nu`` drawn per device."""
    return g * torch.exp(-nu * math.log(d.time_s / d.t0_s))
