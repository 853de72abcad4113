"""First-order energy per inference: exact operation counts to joules (docs/physics.md section 12).

The engine counts, per analog layer and image, what the chip does (``mcsim/engine/counting.py``);
these pure functions price the counts. Only they depend on the energy parameters
(``hardware.energy``), so a sweep over prices never needs a new simulation in principle, and
nothing here changes an accuracy.

* **ADC**: a Walden figure of merit, ``E_conv = FOM * 2**bits`` per conversion (Walden, IEEE JSAC
  17(4), 1999; the ISSCC FOM of Murmann's ADC Performance Survey). A ramp ADC, the study's, counts
  ``2**bits`` steps per conversion, so the exponential is its natural scaling too.
* **DAC / row drivers**: a fixed energy per pulse, one per row line driven per MVM (per input bit
  when bit-serial; rows whose input or bit is zero are not pulsed).
* **Array**: the devices' read dissipation ``V_read**2 * t_read * sum(G * v**2)``, ``G`` in siemens
  (normalized ``G * Gmax``), ``v`` the normalized input (0 or +-1 per bit when bit-serial), summed
  over every device read. The only term in which the mapping's conductances enter.
* **Digital**: shift-and-adds (recombining slices, input bits and partitions; the offset term) at
  one energy per add, and the multiply-accumulates of layers kept digital at one energy per MAC.
"""
from __future__ import annotations

COMPONENTS = ("adc", "dac", "array", "digital")


def adc_conversion_energy(bits: int, fom_j: float) -> float:
    """Joules per conversion of a ``bits``-bit ADC with Walden figure of merit ``fom_j`` (J/step)."""
    return fom_j * 2.0**bits


def adc_energy(conversions, bits: int, fom_j: float):
    """Joules of ``conversions`` conversions at ``bits`` bits."""
    return conversions * adc_conversion_energy(bits, fom_j)


def dac_energy(pulses, pulse_j: float):
    """Joules of ``pulses`` row-driver pulses."""
    return pulses * pulse_j


def array_energy(g_v2, v_read: float, t_read: float, gmax_siemens: float):
    """Joules dissipated in the devices: ``V_read**2 * t_read * Gmax * sum(G_norm * v**2)``, with
    ``g_v2 = sum(G_norm * v**2)`` over the devices and reads (normalized conductance, normalized
    input). Only the product ``Gmax * V_read**2 = I_max * V_read`` matters."""
    return g_v2 * (v_read**2 * t_read * gmax_siemens)


def digital_energy(adds, macs, add_j: float, mac_j: float):
    """Joules of ``adds`` additions and ``macs`` multiply-accumulates."""
    return adds * add_j + macs * mac_j
