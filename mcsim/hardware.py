"""The hardware description: one pydantic schema for the Python API and the scenario YAML.

Every field is a physical or architectural choice of docs/physics.md; defaults follow the study
(Xiao et al. 2022). Invalid combinations fail at construction with a message naming the field.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcsim import tables
from mcsim.designs import DESIGNS
from mcsim.errors import InputError

PositiveFloat = Field(gt=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ADC(_Strict):
    """docs/physics.md section 7."""

    bits: Optional[int] = Field(8, ge=1, le=24, description="ADC resolution; null = ideal ADC")
    range: Literal["calibrated", "max", "explicit"] = "calibrated"
    percentile: float = Field(99.98, gt=50, le=100, description="central percentile covered when calibrated")
    limits: Optional[tuple[float, float]] = Field(
        None,
        description="explicit [lo, hi] in units of one Gmax device under full input voltage",
    )
    offset_lsb: float = Field(0.0, ge=0, description="sigma of each ADC's input-referred offset, in LSB, drawn "
                              "once per chip (docs/physics.md 13.6); 0 = none")
    gain_sigma: float = Field(0.0, ge=0, description="sigma of each ADC's relative gain error g (gain 1 + g), "
                              "drawn once per chip; 0 = none")
    noise_lsb: float = Field(0.0, ge=0, description="comparator noise sigma per conversion, in LSB; 0 = none")
    slice_ranges: Literal["power_of_two", "independent"] = Field(
        "power_of_two",
        description="calibrated ranges of weight slices: differing only by powers of two (the study's "
        "constraint: recombination is a shift; with a reference column, the steps only: "
        "docs/physics.md 15), or calibrated independently per slice",
    )
    levels: Literal["mid_tread", "mid_rise"] = Field(
        "mid_tread",
        description="where the 2**bits levels sit in [lo, hi] (docs/physics.md section 15): mid_tread, "
        "2**bits - 1 steps from lo to hi (both ends and, for a range around zero, zero are levels); "
        "mid_rise, 2**bits steps of (hi - lo) / 2**bits with levels at their centres, no zero code "
        "(a ramp ADC as CrossSim models it)",
    )
    grid: bool = Field(
        False,
        description="calibrated ranges snapped onto the column outputs' grid (one weight digit times one "
        "input level): the step a power-of-two multiple or fraction of the grid unit, lo a multiple of "
        "the step, the range still covering the calibrated one (needs quantized weights and inputs)",
    )

    @model_validator(mode="after")
    def _limits(self):
        if self.range == "explicit":
            if self.limits is None:
                raise ValueError("adc.limits: required when adc.range is 'explicit'")
            if not self.limits[0] < self.limits[1]:
                raise ValueError("adc.limits: lo must be below hi")
        elif self.limits is not None:
            raise ValueError("adc.limits: only used with adc.range 'explicit'")
        if self.grid and self.range != "calibrated":
            raise ValueError("adc.grid: only used with adc.range 'calibrated'")
        if self.grid and self.levels == "mid_rise":
            raise ValueError("adc.grid: snaps mid-tread levels onto the output grid; mid-rise levels sit "
                             "half a step off it (use adc.levels 'mid_tread' or adc.grid false)")
        if self.bits is None:
            for key in ("offset_lsb", "gain_sigma", "noise_lsb"):
                if getattr(self, key) != 0:
                    raise ValueError(f"adc.{key}: an ideal ADC (adc.bits null) has no mismatch or noise; "
                                     "set adc.bits or leave it 0")
        return self

    @property
    def mismatched(self) -> bool:
        """Whether each ADC has its own offset or gain (drawn once per chip)."""
        return self.offset_lsb != 0 or self.gain_sigma != 0


class _Tabled(_Strict):
    """A setting that may read a measured device table (docs/physics.md 13.1)."""

    file: Optional[str] = Field(None, description="measured table (CSV or NPZ; relative to the current "
                                "directory) for model 'table'")
    gmax: Optional[float] = Field(None, gt=0, description="the table's physical Gmax in its unit; null = the "
                                  "file's '# gmax:' header")
    unit: Optional[str] = Field(None, description="the table's unit (checked against the file's header)")
    sha256: Optional[str] = Field(None, description="the table's content hash, filled when the scenario "
                                  "loads (so the scenario fingerprint changes with the table)")

    def _table(self, field: str, need: tuple[str, ...], used: bool):
        """Check the table (filling ``sha256``) when ``used``; else refuse table settings."""
        if not used:
            given = [k for k in ("file", "gmax", "unit", "sha256") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{field}.{given[0]}: only used with {field}.model 'table'")
            return
        if self.file is None:
            raise ValueError(f"{field}.file: required with {field}.model 'table' (a CSV or NPZ table)")
        table, _ = tables.load(self.file, need, self.gmax, self.unit, field)
        if self.sha256 is not None and self.sha256 != table.sha256:
            raise ValueError(f"{field}.sha256: the table {self.file!r} changed (sha256 {table.sha256[:12]}, "
                             f"the scenario recorded {self.sha256[:12]}); results of the old table cannot "
                             "be mixed with the new one: restore it or drop the recorded hash")
        object.__setattr__(self, "sha256", table.sha256)


def _check_factory(ref: Optional[str], field: str, used: bool) -> None:
    if not used:
        if ref is not None:
            raise ValueError(f"{field}.factory: only used with {field}.model 'factory'")
        return
    if ref is None:
        raise ValueError(f"{field}.factory: required with {field}.model 'factory' ('package.module:function')")
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{field}.factory: {ref!r} is not of the form 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{field}.factory: cannot import {ref!r} ({err})") from None
    if not callable(fn):
        raise ValueError(f"{field}.factory: {ref!r} is not callable")


class ProgrammingError(_Tabled):
    """docs/physics.md sections 4 and 13: one draw per chip."""

    model: Literal["none", "independent", "proportional", "sonos", "sonos_tcas", "pcm", "rram", "table",
                   "factory"] = "none"
    sigma: float = Field(0.0, ge=0, description="relative sigma (independent, proportional)")
    scale: float = Field(1.0, ge=0, description="multiplier of a fitted device model's sigma curve")
    clip: bool = True
    factory: Optional[str] = Field(None, description="model 'factory': 'package.module:function' called as "
                                   "fn(targets, eps, gmin) -> conductances (README, 'Your own device')")

    @model_validator(mode="after")
    def _sigma_for_model(self):
        if self.model in ("sonos", "sonos_tcas", "pcm", "rram", "table", "factory") and self.sigma != 0:
            raise ValueError(
                f"error.sigma: the '{self.model}' device model has a "
                + {"factory": "sigma of its own (the user's function); leave error.sigma 0",
                   "table": "measured sigma curve; use error.scale to scale it"}.get(
                    self.model, "fitted sigma curve; use error.scale to scale it")
            )
        if self.model == "factory" and self.scale != 1:
            raise ValueError("error.scale: not used with error.model 'factory'")
        self._table("error", ("sigma",), self.model == "table")
        _check_factory(self.factory, "error", self.model == "factory")
        return self


class ReadNoise(_Tabled):
    """docs/physics.md sections 4 and 13.5: drawn afresh at every MVM (every input bit when bit-serial)."""

    model: Literal["none", "independent", "proportional", "sonos", "pcm", "table"] = "none"
    sigma: float = Field(0.0, ge=0)
    t_read_s: Optional[float] = Field(
        None, gt=0, description="1/f read noise growing with the time since programming (drift.time_s): "
        "sigma_r(G, t) = sigma_r(G) sqrt(log((t + t_read) / (2 t_read))); null = constant in time")

    @model_validator(mode="after")
    def _table_check(self):
        if self.model in ("pcm", "table") and self.sigma != 0:
            raise ValueError(f"read_noise.sigma: the '{self.model}' read-noise model has its own sigma curve")
        if self.model == "pcm" and self.t_read_s is None:
            raise ValueError("read_noise.t_read_s: the 'pcm' model is a 1/f coefficient that grows with time "
                             "since programming; set t_read_s (the fit's: 250e-9) and drift.time_s")
        self._table("read_noise", ("sigma_read",), self.model == "table")
        return self


class Drift(_Tabled):
    """docs/physics.md sections 4 and 13.5 (beyond the study): G(t) = G0 (t/t0)^-nu, nu ~ N(nu_mean, nu_std)
    per device; nu_mean and nu_std constant, or functions of the target conductance (a table or the PCM fit)."""

    model: Literal["constant", "pcm", "table"] = Field(
        "constant", description="nu_mean/nu_std: constant, the PCM fit nu(G) (Nandakumar et al. 2019), or a table")
    time_s: Optional[float] = Field(None, gt=0, description="time since programming; null = no drift")
    t0_s: float = Field(20.0, gt=0)
    nu_mean: float = Field(0.05, ge=0)
    nu_std: float = Field(0.0, ge=0)
    compensate: bool = False

    @model_validator(mode="after")
    def _t(self):
        if self.time_s is not None and self.time_s < self.t0_s:
            raise ValueError("drift.time_s: must be at least drift.t0_s")
        if self.model != "constant":
            for key in ("nu_mean", "nu_std"):  # compared with the defaults: dumps re-validate every field
                if getattr(self, key) != Drift.model_fields[key].default:
                    raise ValueError(f"drift.{key}: only used with drift.model 'constant' (the '{self.model}' "
                                     "model gives nu as a function of G)")
        self._table("drift", ("nu_mean", "nu_std"), self.model == "table")
        return self


class Faults(_Strict):
    """docs/physics.md 13.3: each device stuck after programming, drawn once per chip."""

    stuck_off: float = Field(0.0, ge=0, le=1, description="probability that a device is stuck at Gmin")
    stuck_on: float = Field(0.0, ge=0, le=1, description="probability that a device is stuck at Gmax")

    @model_validator(mode="after")
    def _total(self):
        if self.stuck_off + self.stuck_on > 1:
            raise ValueError(f"faults.stuck_on: stuck_off + stuck_on = {self.stuck_off + self.stuck_on:g} "
                             "exceeds 1")
        return self

    @property
    def active(self) -> bool:
        return self.stuck_off > 0 or self.stuck_on > 0


class Variation(_Strict):
    """docs/physics.md 13.4: multiplicative conductance components shared per chip, array and column,
    ``G' = G'_cell (1 + chip e_c) (1 + array e_a) (1 + column e_k)``."""

    chip: float = Field(0.0, ge=0, description="relative sigma shared by every device of a chip (all layers)")
    array: float = Field(0.0, ge=0, description="relative sigma shared by the devices of one array")
    column: float = Field(0.0, ge=0, description="relative sigma shared by the devices of one array column")

    @property
    def active(self) -> bool:
        return self.chip > 0 or self.array > 0 or self.column > 0


class Parasitics(_Strict):
    """docs/physics.md section 8."""

    rp: float = Field(0.0, ge=0, description="wire segment resistance times Gmax")
    topology: Literal["columns", "grid"] = "columns"
    rows: Literal["auto", "gated", "driven"] = Field(
        "auto",
        description="row circuit: gated (each input bit switches its row's device in or out; bit-serial "
        "inputs only), driven (the DAC holds every row at its voltage), auto = gated for bit-serial "
        "inputs on the column topology, driven otherwise",
    )

    @model_validator(mode="after")
    def _rows(self):
        if self.rows == "gated" and self.topology == "grid":
            raise ValueError(
                "parasitics.rows: gated rows are solved on the column-only topology; with "
                "parasitics.topology 'grid' use parasitics.rows 'driven' (or 'auto')"
            )
        return self


class Energy(_Strict):
    """First-order energy per inference (docs/physics.md section 12): the prices that turn the
    engine's exact operation counts into joules. They never change an accuracy. Defaults are
    order-of-magnitude figures, each with its source; override them for a given process.
    """

    # Walden FOM P / (fs * 2**ENOB). 10 fJ/step is a round value near the state of the art of
    # published Nyquist ADCs at ~1 GS/s (B. Murmann, "ADC Performance Survey 1997-2023",
    # github.com/bmurmann/ADC-survey): an 8-bit conversion then costs 2.56 pJ. The study's 8-bit
    # 1 GHz ramp ADC (Xiao et al. 2022, Section 9) has no published per-conversion figure here.
    adc_fom_j: float = Field(10e-15, gt=0, description="ADC Walden figure of merit, J per conversion step: E = adc_fom_j * 2**bits")
    # An ideal ADC (adc.bits null) is not a circuit: its conversions are counted and charged as
    # conversions at this resolution (the study's 8 bits), so designs compare on equal terms.
    ideal_adc_bits: int = Field(8, ge=1, le=24, description="resolution charged per conversion of an ideal ADC (adc.bits null)")
    # Row driver: charging one row line, C * V**2. Estimate (this project, 2026): a 40 nm line of
    # ~256 cells at ~0.2 fF each (gate and wire) switched at 1.1 V is ~60 fJ; 50 fJ, order of
    # magnitude only.
    dac_pulse_j: float = Field(50e-15, ge=0, description="J per row-driver pulse (one row, one MVM or input bit)")
    # SONOS read: the study's cell spans 0 to Imax = 1.6 uA (Xiao et al., IEEE CAS Magazine 22(4),
    # 2022, p. 42, Fig. 20), in subthreshold with a small drain bias; 0.1 V is assumed here (not
    # verified against the paper). Gmax = 1.6 uA / 0.1 V = 16 uS. Only Imax * V_read enters.
    v_read: float = Field(0.1, gt=0, description="read voltage across a device at full input, V")
    t_read: float = Field(10e-9, gt=0, description="integration time per MVM (per input bit when bit-serial), s; the study: 10 ns (Section 9)")
    gmax_siemens: float = Field(16e-6, gt=0, description="physical Gmax, S (SONOS: 1.6 uA at 0.1 V)")
    # M. Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm): 32-bit integer add 0.1 pJ,
    # 8-bit add 0.03 pJ, 8-bit multiply 0.2 pJ. Recombination accumulates 8-bit codes shifted by up
    # to ~2**20 (32-bit adds); a kept-digital layer is an int8 multiply plus a 32-bit accumulate.
    add_j: float = Field(0.1e-12, ge=0, description="J per digital add (Horowitz ISSCC 2014, 32-bit int add, 45 nm)")
    mac_j: float = Field(0.3e-12, ge=0, description="J per digital MAC (Horowitz ISSCC 2014: 8-bit mult 0.2 pJ + 32-bit add 0.1 pJ)")


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, nested dicts merged key by key (settings objects count as the
    fields they set)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Hardware(_Strict):
    """All analog settings of a simulated chip (docs/physics.md sections 2-8).

    ``design`` names one of the study's design points (:mod:`mcsim.designs`): its preset applies
    first, the other settings given go on top, nested ones merged key by key.

    >>> Hardware(design="A", adc={"bits": 10}).adc.percentile  # the rest of A's ADC stays
    99.98
    """

    design: Optional[Literal[tuple(DESIGNS)]] = Field(
        None, description="start from one of the study's design points A-E or a published chip (ISAAC, PRIME, "
        "SONOS-TCAS; mcsim.designs); other settings override it")
    mapping: Literal["differential", "offset"] = "differential"
    subtraction: Literal["analog", "digital"] = Field(
        "analog", description="where a pair's currents are subtracted (docs/physics.md section 15): analog, "
        "before one ADC; digital, each column through its own ADC, the codes subtracted. Read for the "
        "differential mapping, and for offset with offset_reference 'column'")
    offset_reference: Literal["nominal", "column"] = Field(
        "nominal", description="offset mapping: subtract the nominal G_zero * sum(x) digitally (nominal), or "
        "the current of a reference column programmed at G_zero on every array (column, ISAAC's unit column)")
    on_off_ratio: Optional[float] = Field(100.0, gt=1, description="Gmax/Gmin; null = infinite")
    weight_bits: Optional[int] = Field(8, ge=2, le=16, description="null = continuous weights")
    weight_percentile: float = Field(100.0, gt=50, le=100, description="w_max as a percentile of |W|")
    slices: int = Field(1, ge=1)
    input_bits: Optional[int] = Field(8, ge=2, le=16, description="null = continuous inputs")
    input_percentile: float = Field(99.99, gt=50, le=100, description="input range calibration percentile")
    input_mode: Literal["analog", "bitserial"] = "analog"
    input_accumulation: Literal["analog", "digital"] = "analog"
    input_slice_bits: int = Field(1, ge=1, le=16, description="bits per input slice of bit-serial inputs "
                                  "(a k-bit DAC, docs/physics.md section 16); 1 = one bit at a time")
    rows_max: int = Field(1152, ge=1)
    cols_max: Optional[int] = Field(None, ge=1)
    analog_first_layer: bool = True
    analog_last_layer: bool = True
    analog: bool = Field(True, description="the layer runs on crossbars; false keeps it digital (per layer, "
                         "through `layers`; false for the whole chip keeps every layer digital)")
    layers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-layer overrides: module name or fnmatch glob -> partial hardware settings, "
                    "nested ones merged key by key (see Hardware.for_layer)")
    adc: ADC = ADC()
    error: ProgrammingError = ProgrammingError()
    read_noise: ReadNoise = ReadNoise()
    drift: Drift = Drift()
    faults: Faults = Faults()
    variation: Variation = Variation()
    parasitics: Parasitics = Parasitics()
    energy: Energy = Energy()

    @model_validator(mode="before")
    @classmethod
    def _apply_design(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("design") is None:
            return data
        name = data["design"]
        if name not in DESIGNS:
            raise ValueError(f"design: unknown design {name!r}; valid designs are {', '.join(sorted(DESIGNS))}")
        return _merge(DESIGNS[name], data)

    @model_validator(mode="after")
    def _layer_overrides(self):
        # Each override must give valid hardware on top of this one; store it normalised (the
        # validated values of the keys it sets), so that 0 and 0.0 fingerprint alike.
        base = self.model_dump(exclude={"layers"})
        normalised, problems = {}, []
        for pattern, override in self.layers.items():
            where = f"layers.{pattern}" if _PLAIN.match(pattern) else f"layers[{pattern!r}]"
            if not isinstance(override, dict):
                problems.append(f"{where}: a mapping of hardware settings, not {type(override).__name__}")
                continue
            banned = [k for k in ("layers", "design", "analog_first_layer", "analog_last_layer") if k in override]
            if banned:
                problems.append(f"{where}: {', '.join(banned)} cannot be set per layer")
                continue
            try:
                hw = Hardware.model_validate(_merge(base, override))
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                errors = err.errors() if hasattr(err, "errors") else [{"msg": str(err), "loc": ()}]
                for e in errors:
                    at = "".join(f".{part}" for part in e.get("loc", ()))
                    problems.append(f"{where}{at}: {e['msg'].removeprefix('Value error, ')}")
                continue
            normalised[pattern] = _project(hw.model_dump(mode="json"), _with_table_hashes(override))
        if problems:
            raise ValueError("\n".join(problems))
        object.__setattr__(self, "layers", normalised)
        return self

    @model_validator(mode="after")
    def _consistent(self):
        if self.weight_bits is None:
            if self.slices != 1:
                raise ValueError("slices: continuous weights (weight_bits null) need slices = 1")
        elif self.slices > self.magnitude_bits:
            raise ValueError(
                f"slices: {self.slices} slices exceed the {self.magnitude_bits} bits stored per weight "
                f"(weight_bits {self.weight_bits}, {self.mapping} mapping)"
            )
        t_read = self.read_noise.t_read_s
        if t_read is not None and (self.drift.time_s is None or self.drift.time_s <= t_read):
            raise ValueError("read_noise.t_read_s: read noise growing with time needs drift.time_s (the "
                             f"time since programming) above t_read_s {t_read:g} s")
        if self.offset_reference == "column":
            self._check_reference_column()
        if self.input_mode == "bitserial" and self.input_bits is None:
            raise ValueError("input_mode: bit-serial inputs need integer input_bits, not null")
        if self.input_slice_bits > 1 and self.input_mode != "bitserial":
            raise ValueError(
                f"input_slice_bits: slices of {self.input_slice_bits} bits cut bit-serial inputs and need "
                "input_mode 'bitserial' (analog inputs already drive every level at once)"
            )
        if self.parasitics.rows == "gated" and self.input_mode != "bitserial":
            raise ValueError(
                "parasitics.rows: gated rows are switched by input bits and need input_mode 'bitserial'; "
                "analog inputs drive their rows (parasitics.rows 'driven' or 'auto')"
            )
        return self

    def _check_reference_column(self):
        """docs/physics.md section 15: what a reference column combines with."""
        if self.mapping != "offset":
            raise ValueError("offset_reference: a reference column subtracts the offset mapping's G_zero term; "
                             f"the {self.mapping} mapping has none (use mapping 'offset', or offset_reference "
                             "'nominal')")
        if self.variation.array > 0 or self.variation.column > 0:
            raise ValueError("offset_reference: the reference column's array and column variation are not "
                             "modelled; use variation.array and variation.column 0 (the chip component "
                             "applies), or offset_reference 'nominal'")
        if self.parasitics.rp > 0 and self.parasitics.topology == "grid":
            raise ValueError("offset_reference: the reference column on the grid topology is not modelled; "
                             "use parasitics.topology 'columns', or offset_reference 'nominal'")

    def for_layer(self, name: str) -> "Hardware":
        """The effective hardware of the layer named ``name`` (its module path in the model).

        Every pattern of ``layers`` that matches ``name`` (``fnmatch``: ``*`` also matches dots,
        so ``"layer4.*"`` covers ``layer4.0.conv1``) applies on top of this hardware, nested
        settings merged key by key. Order: globs first, in the order written, then the name of a
        recurrent module (``lstm`` for its matrices ``lstm.weight_ih_l0``, ...), then the exact
        name: a later pattern wins over an earlier one, an exact name over every glob.

        Args:
            name: the layer's module path (``"layer4.0.conv1"``; :func:`mcsim.engine.convert.crossbar_layers`
                lists a model's).

        Returns:
            A :class:`Hardware`: this one with every matching override applied, without
            ``layers`` or ``design`` of its own (a design's settings keep their values).

        Raises:
            pydantic.ValidationError: the overrides that match ``name``, merged, break a rule of
                the hardware (each override alone was checked when this hardware was built).

        Examples:
            >>> hw = Hardware(adc={"bits": 8}, layers={"*": {"adc": {"bits": 6}}, "fc": {"analog": False}})
            >>> hw.for_layer("conv1").adc.bits, hw.for_layer("fc").analog, hw.for_layer("fc").adc.bits
            (6, False, 6)
        """
        data = self.model_dump(exclude={"layers", "design"})
        for pattern in matching_patterns(self.layers, name):
            data = _merge(data, self.layers[pattern])
        return Hardware.model_validate(data)

    def resolve_layers(self, names: list[str]) -> dict[str, "Hardware"]:
        """``{name: for_layer(name)}`` for the model's layers ``names``; raises
        :class:`LayerNameError` for a pattern of ``layers`` that matches none of them."""
        check_patterns(self.layers, names, "layers")
        return {name: self.for_layer(name) for name in names}

    @property
    def gated_rows(self) -> bool:
        """Whether rows are gated by the input bits (docs/physics.md section 8): bit-serial inputs on the
        column-only topology, unless ``parasitics.rows`` is 'driven'."""
        par = self.parasitics
        return self.input_mode == "bitserial" and par.topology == "columns" and par.rows != "driven"

    @property
    def magnitude_bits(self) -> int:
        """Bits stored in devices: |q| (differential) or the level u (offset); docs/physics.md section 3."""
        return self.weight_bits - 1 if self.mapping == "differential" else self.weight_bits

    @property
    def gmin(self) -> float:
        return 0.0 if self.on_off_ratio is None else 1.0 / self.on_off_ratio

    def is_ideal(self) -> bool:
        return (
            self.weight_bits is None
            and self.input_bits is None
            and self.adc.bits is None
            and self.error.model == "none"
            and self.read_noise.model == "none"
            and self.drift.time_s is None
            and not self.faults.active
            and not self.variation.active
            and not self.adc.mismatched
            and self.adc.noise_lsb == 0
            and self.parasitics.rp == 0
        )


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GLOB_CHARS = set("*?[")


class LayerNameError(InputError, ValueError):
    """A per-layer pattern that names no layer of the model (the message lists close matches)."""

    in_scenario = True


def is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


_RECURRENT_MATRIX = re.compile(r"^(.+)\.weight_(ih|hh|hr)_l\d+(_reverse)?$")


def recurrent_owner(name: str) -> Optional[str]:
    """The recurrent module (LSTM, GRU, RNN) holding the matrix layer ``name`` (``lstm`` for
    ``lstm.weight_hh_l0``; docs/physics.md section 17), or None: its name is a pattern for all of its
    matrices."""
    m = _RECURRENT_MATRIX.match(name)
    return m.group(1) if m else None


def matches(pattern: str, name: str) -> bool:
    """Whether the layer pattern ``pattern`` (a glob, a layer's name or a recurrent module's name)
    covers the layer ``name``."""
    if is_glob(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern == name or recurrent_owner(name) == pattern


def matching_patterns(patterns, name: str) -> list[str]:
    """The patterns that match ``name``, in the order they apply: globs as written, then the name of
    the recurrent module holding it (a matrix of an LSTM, GRU or RNN), then the exact name."""
    globs = [p for p in patterns if is_glob(p) and fnmatch.fnmatchcase(name, p)]
    owner = recurrent_owner(name)
    return globs + ([owner] if owner in patterns else []) + ([name] if name in patterns else [])


def check_patterns(patterns, names: list[str], field: str) -> None:
    """Raise :class:`LayerNameError` naming ``field`` for each pattern that matches no name."""
    problems = []
    for pattern in patterns:
        if any(matches(pattern, n) for n in names):
            continue
        close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                else f"the model's convolution/Linear layers: {', '.join(names) or 'none'}")
        kind = "glob" if is_glob(pattern) else "layer name"
        problems.append(f"{field}: {kind} {pattern!r} matches no convolution/Linear layer of the model ({hint})")
    if problems:
        raise LayerNameError("\n".join(problems))


def _with_table_hashes(override: dict) -> dict:
    """``override`` with a ``sha256`` key beside every table ``file`` it sets, so that the stored
    override (and so the scenario fingerprint) records the table's content (docs/physics.md 13.1)."""
    out = dict(override)
    for key in ("error", "read_noise", "drift"):
        if isinstance(out.get(key), dict) and "file" in out[key]:
            out[key] = {**out[key], "sha256": None}
    return out


def _project(full: Any, shape: Any) -> Any:
    """The values of ``full`` at the keys ``shape`` sets (nested dicts followed)."""
    if isinstance(shape, dict) and isinstance(full, dict):
        return {k: _project(full[k], v) for k, v in shape.items()}
    return full
