"""The sweep of a scenario: its schema (``Sweep``) and its expansion into the points the runner simulates.

``expand(scenario)`` gives a ``SweepPlan``: one result dim per grid key (named by the key's
last dotted component: ``hardware.error.sigma`` -> ``sigma``), then one dim ``point`` if the
sweep has zipped keys (each zipped key is a coordinate along ``point``, again named by its last
component). ``plan.points`` lists every point in C order over ``plan.dims``, each with the
``Hardware`` it simulates: the scenario's hardware with the point's overrides applied.

An override replaces the value at its dotted path in the hardware's nested settings (a dict
value replaces the whole group: ``hardware.adc: [{bits: 4}]`` gives an ADC with default
settings but 4 bits) and the result is validated by pydantic. A swept ``hardware.design`` first
sets every setting a design preset controls to its preset's value (whatever the scenario's hardware
says; keys zipped beside it go on top), so ``zip: {hardware.design: [A, B, C]}`` compares the presets.

Per-layer overrides are swept through ``hardware.layers``: the component after ``layers`` is a
module name or glob (:meth:`mcsim.hardware.Hardware.for_layer`), plain when it is one word
(``hardware.layers.fc.adc.bits``), else quoted in brackets, as module names hold dots
(``hardware.layers["layer4.*"].adc.bits``, ``hardware.layers['stem.0'].analog``). Such a key's
dim is named ``<pattern>.<last component>`` (``fc.bits``, ``layer4.*.bits``), so that it never
clashes with the chip-wide setting.

The layer sensitivity sweep (``sweep.layers``, :class:`LayerSweep`) adds a last dim
``target_layer`` with one point per layer of the model: only that layer analog
(``only_analog``; the others digital) or only that layer ideal (``only_ideal``; an ideal layer
computes exactly the digital layer, so it is kept digital; a first point ``(none)`` has no layer
ideal: the reference). The layers come from the model, so :func:`expand` needs their names
(``layer_names``); the driver passes them once the model is loaded.

No torch, ray or zarr here; nor :mod:`mcsim.scenario` (which imports this module).
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Protocol

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mcsim.hardware import Hardware, check_patterns, matches
from mcsim.validation import ScenarioError, StrictModel, canonical_json, format_validation_error, model_behind

__all__ = [
    "LAYER_DIM",
    "LayerSweep",
    "RESERVED_DIMS",
    "Sweep",
    "SweepPlan",
    "SweepPoint",
    "SweptScenario",
    "apply_overrides",
    "dim_name",
    "dim_name_problems",
    "expand",
    "key_parts",
    "normalized_sweep",
]

#: Dimension names the result store uses itself; no sweep key may be named like them.
LAYER_DIM = "target_layer"  # the dim of the layer sensitivity sweep ("layer" is the calibration's)
NO_LAYER = "(none)"  # only_ideal's reference point: no layer ideal
RESERVED_DIMS = ("trial", "layer", "point", "slice", LAYER_DIM)
POINT_DIM = "point"
_MAX_POINT_ERRORS = 10
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------
# the schema of the sweep


_PLAIN_PART = re.compile(r"[A-Za-z0-9_*?-]+")
_QUOTED_PART = re.compile(r"""\[(["'])(.+?)\1\]""")


def key_parts(key: str) -> list[str]:
    """The components of a sweep key: dot-separated words, or quoted strings in brackets
    (``hardware.layers["layer4.*"].adc.bits`` -> ``hardware, layers, layer4.*, adc, bits``).
    Raises ``ValueError`` for a malformed key."""
    parts: list[str] = []
    pos = 0
    while pos < len(key):
        if key[pos] == "[":
            m = _QUOTED_PART.match(key, pos)
        else:
            if parts:
                if key[pos] != ".":
                    m = None
                else:
                    pos += 1
                    m = _PLAIN_PART.match(key, pos)
            else:
                m = _PLAIN_PART.match(key, pos)
        if m is None:
            raise ValueError(f"not a valid sweep key at character {pos + 1}: use dotted names, and quote a "
                             "layer name with dots in brackets: hardware.layers[\"layer4.*\"].adc.bits")
        parts.append(m.group(2) if m.re is _QUOTED_PART else m.group(0))
        pos = m.end()
    return parts


def _hardware_setting_problem(key: str) -> Optional[str]:
    """Why ``key`` is not a valid dotted path to a Hardware setting (None if it is)."""
    try:
        parts = key_parts(key)
    except ValueError as err:
        return str(err)
    if not parts or parts[0] != "hardware" or len(parts) < 2:
        return "sweep keys must be dotted paths into the hardware, starting with 'hardware.'"
    model: Optional[type[BaseModel]] = Hardware
    walked = ["hardware"]
    pattern_next = False
    for i, part in enumerate(parts[1:]):
        if pattern_next:  # a module name or glob of hardware.layers: its settings are Hardware's
            walked.append(part if _IDENT_RE.match(part) else f"[{part!r}]")
            model, pattern_next = Hardware, False
            continue
        if not _IDENT_RE.match(part):
            return "not a valid dotted path"
        if model is None:
            return f"'{'.'.join(walked)}' is a single setting, not a group of settings"
        fields = list(model.model_fields)
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1, cutoff=0.6)
            hint = f"did you mean '{'.'.join(walked + [close[0]])}'?" if close else f"known: {', '.join(fields)}"
            return f"unknown hardware setting '{part}' in '{'.'.join(walked)}' ({hint})"
        walked.append(part)
        if model is Hardware and part == "layers":
            pattern_next, model = True, None
            continue
        model = model_behind(model.model_fields[part].annotation)
    return None


def dim_name(key: str) -> str:
    """The sweep dim/coordinate name of a sweep key: its last component; through
    ``hardware.layers``, ``<pattern>.<last component>`` (``hardware.layers.fc.adc.bits`` ->
    ``fc.bits``; ``hardware.layers["stem.0"]`` -> ``stem.0``)."""
    try:
        parts = key_parts(key)
    except ValueError:
        return key.rsplit(".", 1)[-1]
    if len(parts) >= 3 and parts[:2] == ["hardware", "layers"]:
        return parts[2] if len(parts) == 3 else f"{parts[2]}.{parts[-1]}"
    return parts[-1]


def dim_name_problems(grid_keys: list[str], zip_keys: list[str]) -> list[str]:
    """Clashes of the result names given to sweep keys (each other's, or a reserved dim's)."""
    problems = []
    owner: dict[str, str] = {}
    for section, keys in (("grid", grid_keys), ("zip", zip_keys)):
        for key in keys:
            name = dim_name(key)
            if name in RESERVED_DIMS:
                problems.append(
                    f"{section}: '{key}' would be named '{name}', a name reserved for the "
                    f"result dims ({', '.join(RESERVED_DIMS)})"
                )
            elif name in owner:
                problems.append(
                    f"{section}: '{key}' and '{owner[name]}' would both be named '{name}' in the "
                    "results; sweep only one of them"
                )
            else:
                owner[name] = key
    return problems


class LayerSweep(StrictModel):
    """The layer sensitivity sweep: one point per layer, as the last dim ``target_layer``.

    ``only_analog``: the point's layer is analog, every other layer digital (the accuracy it
    costs: the digital model's accuracy minus the point's). ``only_ideal``: the point's layer is
    ideal (kept digital), every other layer analog; a first point ``(none)`` is the chip with no
    layer ideal (the accuracy a layer costs: the point's accuracy minus ``(none)``'s).
    ``include``/``exclude``: module names or fnmatch globs of the model's Conv2d/Linear layers (a recurrent
    module's name covers its matrices).
    """

    mode: Literal["only_analog", "only_ideal"]
    include: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    exclude: list[str] = Field(default_factory=list)

    def select(self, names: list[str]) -> list[str]:
        """The layers of ``names`` (model order) swept; raises ``LayerNameError`` for a pattern
        that matches no layer, and ``ValueError`` when nothing is left."""
        check_patterns(self.include, names, "sweep.layers.include")
        check_patterns(self.exclude, names, "sweep.layers.exclude")
        chosen = [n for n in names if any(matches(p, n) for p in self.include)
                  and not any(matches(p, n) for p in self.exclude)]
        if not chosen:
            raise ValueError("sweep.layers: include and exclude leave no layer to sweep")
        return chosen

    def point_hardware(self, hardware: Hardware, layer: str) -> Hardware:
        """``hardware`` at the point of ``layer``: the mode's ``analog`` overrides on top of the
        point's own layer overrides (``*`` moved last among the globs, the exact name applies after
        every glob)."""
        layers = dict(hardware.layers)
        if self.mode == "only_analog":
            layers["*"] = {**layers.pop("*", {}), "analog": False}
            layers[layer] = {**layers.get(layer, {}), "analog": True}
        elif layer != NO_LAYER:
            layers[layer] = {**layers.get(layer, {}), "analog": False}
        return hardware.model_copy(update={"layers": layers})


class Sweep(StrictModel):
    """Hardware settings swept: ``grid`` (cartesian product) and ``zip`` (lists taken together),
    and the layer sensitivity sweep ``layers`` (:class:`LayerSweep`).

    Keys are dotted paths into the scenario starting with ``hardware.``. Each grid key gives a
    result dim named by its last component; zip keys share one dim named ``point``, each giving
    a coordinate along it named by its last component. ``layers`` adds the last dim, ``target_layer``.
    """

    grid: dict[str, list] = Field(default_factory=dict)
    zip: dict[str, list] = Field(default_factory=dict)
    layers: Optional[LayerSweep] = None

    @field_validator("grid", "zip", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v

    @field_validator("grid", "zip")
    @classmethod
    def _keys(cls, v: dict[str, list]):
        problems = []
        for key, values in v.items():
            why = _hardware_setting_problem(key)
            if why:
                problems.append(f"{key}: {why}")
            elif not values:
                problems.append(f"{key}: the list of values must not be empty")
        if problems:
            raise ValueError("\n".join(problems))
        return v

    @model_validator(mode="after")
    def _together(self):
        problems = []
        both = [k for k in self.zip if k in self.grid]
        for k in both:
            problems.append(f"'{k}' is in both sweep.grid and sweep.zip; sweep it in one of them")
        if self.zip:
            lengths = {k: len(v) for k, v in self.zip.items()}
            if len(set(lengths.values())) > 1:
                listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                problems.append(f"zip: the zipped lists must all have the same length ({listed})")
        problems += dim_name_problems(list(self.grid), [k for k in self.zip if k not in both])
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def is_empty(self) -> bool:
        return not self.grid and not self.zip and self.layers is None

    def keys(self) -> list[str]:
        """All swept keys: grid keys then zip keys."""
        return list(self.grid) + list(self.zip)


# --------------------------------------------------------------------------------------
# expansion


@dataclass(frozen=True)
class SweepPoint:
    """One point of the sweep."""

    index: int  # flat index, C order over SweepPlan.dims
    position: tuple[int, ...]  # index along each dim of SweepPlan.dims
    labels: dict[str, Any]  # dim / coordinate name -> value at this point (JSON-compatible)
    overrides: dict[str, Any]  # dotted sweep key -> value
    hardware: Hardware  # the scenario's hardware with the overrides applied


@dataclass(frozen=True)
class SweepPlan:
    """All points of a sweep and the dims/coordinates that label them."""

    dims: list[str]
    coords: dict[str, list]
    shape: tuple[int, ...]
    points: list[SweepPoint]
    #: coordinate name -> the dim it lies along (grid coords: themselves; zip coords: 'point')
    coord_dims: dict[str, str] = field(default_factory=dict)
    #: coordinate name -> the dotted sweep key it comes from (absent for 'point')
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def point_at(self, position: tuple[int, ...]) -> SweepPoint:
        """The point at a position (one index per dim)."""
        if len(position) != len(self.shape):
            raise IndexError(f"position {position} does not match dims {self.dims}")
        flat = 0
        for i, n in zip(position, self.shape):
            if not 0 <= i < n:
                raise IndexError(f"position {position} out of shape {self.shape}")
            flat = flat * n + i
        return self.points[flat]


def _set_path(data: dict, key: str, value: Any) -> None:
    parts = key_parts(key)
    if parts[0] != "hardware" or len(parts) < 2:
        raise ValueError(f"{key}: sweep keys must start with 'hardware.'")
    node = data
    for i, part in enumerate(parts[1:-1], start=1):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ValueError(f"{key}: '{'.'.join(parts[:i + 1])}' is a single setting, not a group of settings")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)
    if parts[-1] == "file" and "sha256" in node:  # another device table: its own hash, filled on validation
        node["sha256"] = None


def _get_path(data: dict, key: str) -> Any:
    node: Any = data
    for part in key_parts(key)[1:]:
        node = node[part]
    return node


def apply_overrides(hardware: Hardware, overrides: Mapping[str, Any]) -> Hardware:
    """``hardware`` with each dotted ``hardware.…`` key set to its value, validated.

    Raises pydantic's ``ValidationError`` (or ``ValueError`` for a malformed key).
    """
    if not overrides:
        return hardware
    data = hardware.model_dump()
    if "hardware.design" in overrides:
        _set_design(data, overrides["hardware.design"])
    for key, value in overrides.items():
        if key != "hardware.design":
            _set_path(data, key, value)
    return Hardware.model_validate(data)


def _design_paths(preset: dict, prefix: tuple = ()) -> list[tuple]:
    return [p for k, v in preset.items()
            for p in (_design_paths(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)])]


def _set_design(data: dict, name: Optional[str]) -> None:
    """A point that sweeps ``hardware.design``: every setting some design preset sets takes the
    value of this point's preset (the schema default where it sets none; no preset: the
    defaults), whatever the scenario's hardware says; the other settings stay. The scenario's text
    writes every default out, so "settings the scenario gave" cannot be told from the rest: zip
    another key beside the design to change a preset's setting per point."""
    from mcsim.designs import DESIGNS

    data["design"] = name
    if name is not None and name not in DESIGNS:
        return  # validation names the valid designs
    own = Hardware.model_validate(DESIGNS[name] if name is not None else {}).model_dump()
    for path in {p for preset in DESIGNS.values() for p in _design_paths(preset)}:
        node, value = data, own
        for part in path[:-1]:
            node, value = node.setdefault(part, {}), value[part]
        node[path[-1]] = copy.deepcopy(value[path[-1]])


def _describe(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in overrides.items())


def _build(hardware: Hardware, sweep: Sweep, targets: Optional[list[str]] = None) -> tuple[SweepPlan, list[str]]:
    """The plan (points whose hardware fails validation have hardware=None) and the problems.

    ``targets``: the layers of the layer sweep (its last dim), None without one."""
    grid_keys = list(sweep.grid)
    zip_keys = list(sweep.zip)
    n_zip = len(sweep.zip[zip_keys[0]]) if zip_keys else 0

    dims = [dim_name(k) for k in grid_keys]
    shape = [len(sweep.grid[k]) for k in grid_keys]
    coords: dict[str, list] = {dim_name(k): list(sweep.grid[k]) for k in grid_keys}
    coord_dims = {dim_name(k): dim_name(k) for k in grid_keys}
    keys = {dim_name(k): k for k in grid_keys}
    if zip_keys:
        dims.append(POINT_DIM)
        shape.append(n_zip)
        for k in zip_keys:
            coords[dim_name(k)] = list(sweep.zip[k])
            coord_dims[dim_name(k)] = POINT_DIM
            keys[dim_name(k)] = k
        coords[POINT_DIM] = list(range(n_zip))
        coord_dims[POINT_DIM] = POINT_DIM
    if targets is not None:
        if sweep.layers.mode == "only_ideal":
            targets = [NO_LAYER] + list(targets)
        dims.append(LAYER_DIM)
        shape.append(len(targets))
        coords[LAYER_DIM] = list(targets)
        coord_dims[LAYER_DIM] = LAYER_DIM

    points: list[SweepPoint] = []
    failures: list[str] = []
    n_failed = 0
    for index, position in enumerate(itertools.product(*(range(n) for n in shape))):
        overrides: dict[str, Any] = {}
        labels: dict[str, Any] = {}
        for d, k in enumerate(grid_keys):
            overrides[k] = copy.deepcopy(sweep.grid[k][position[d]])
            labels[dims[d]] = copy.deepcopy(sweep.grid[k][position[d]])
        if zip_keys:
            j = position[len(grid_keys)]
            for k in zip_keys:
                overrides[k] = copy.deepcopy(sweep.zip[k][j])
                labels[dim_name(k)] = copy.deepcopy(sweep.zip[k][j])
            labels[POINT_DIM] = j
        if targets is not None:
            layer = targets[position[-1]]
            labels[LAYER_DIM] = layer
            overrides[f"sweep.layers.{sweep.layers.mode}"] = layer
        try:
            hw = apply_overrides(hardware, {k: v for k, v in overrides.items() if k.startswith("hardware")})
            if targets is not None:
                hw = Hardware.model_validate(sweep.layers.point_hardware(hw, layer).model_dump())
        except ValidationError as err:
            hw = None
            n_failed += 1
            if n_failed <= _MAX_POINT_ERRORS:
                for line in format_validation_error(err, Hardware, prefix="hardware"):
                    failures.append(f"sweep point {_describe(overrides)}: {line}")
        except ValueError as err:
            hw = None
            n_failed += 1
            if n_failed <= _MAX_POINT_ERRORS:
                failures.append(f"sweep point {_describe(overrides)}: {err}")
        points.append(
            SweepPoint(index=index, position=tuple(position), labels=labels, overrides=overrides, hardware=hw)
        )
    if n_failed > _MAX_POINT_ERRORS:
        failures.append(f"... and {n_failed - _MAX_POINT_ERRORS} more sweep points fail")
    plan = SweepPlan(
        dims=dims, coords=coords, shape=tuple(shape), points=points, coord_dims=coord_dims, keys=keys
    )
    return plan, failures


def normalized_sweep(hardware: Hardware, sweep: Sweep) -> Sweep:
    """Validate every sweep point; return the sweep with each value in its validated JSON form.

    Raises ``ValueError`` with one line per problem (``Scenario`` validation turns it into
    field-path messages).
    """
    if not sweep.grid and not sweep.zip:
        return sweep
    plan, problems = _build(hardware, sweep)
    if problems:
        raise ValueError("\n".join(problems))
    dumps: dict[int, dict] = {}

    def value_at(position: list[int], key: str) -> Any:
        point = plan.point_at(tuple(position))
        if point.index not in dumps:
            dumps[point.index] = point.hardware.model_dump(mode="json")
        return _get_path(dumps[point.index], key)

    zeros = [0] * len(plan.shape)
    grid: dict[str, list] = {}
    for d, key in enumerate(sweep.grid):
        values = []
        for i in range(plan.shape[d]):
            pos = list(zeros)
            pos[d] = i
            values.append(value_at(pos, key))
        grid[key] = values
    zipped: dict[str, list] = {}
    for key in sweep.zip:
        values = []
        for j in range(plan.shape[-1]):
            pos = list(zeros)
            pos[-1] = j
            values.append(value_at(pos, key))
        zipped[key] = values

    problems = []
    for key, values in grid.items():
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            c = canonical_json(v)
            if c in seen:
                problems.append(
                    f"sweep.grid.{key}: value {json.dumps(v, default=str)} appears twice "
                    f"(positions {seen[c]} and {i}); a grid dim needs distinct values"
                )
            else:
                seen[c] = i
    if problems:
        raise ValueError("\n".join(problems))
    return Sweep(grid=grid, zip=zipped, layers=sweep.layers)


class SweptScenario(Protocol):
    """What expanding a sweep reads of a scenario: a :class:`mcsim.scenario.Scenario` is one (the
    scenario's schema sits above the sweep's and imports it, so this module names it only so)."""

    name: str
    hardware: Hardware
    sweep: Sweep


def needs_layer_names(scenario: SweptScenario) -> bool:
    """Whether expanding or checking ``scenario`` needs its model's layer names (a layer sweep,
    or per-layer overrides whose patterns must match a layer)."""
    sweep = scenario.sweep
    return (sweep.layers is not None or bool(scenario.hardware.layers)
            or any(key_parts(k)[:2] == ["hardware", "layers"] for k in sweep.keys()))


def expand(scenario: SweptScenario, layer_names: Optional[list[str]] = None) -> SweepPlan:
    """All sweep points of ``scenario``, in C order over the dims.

    ``layer_names``: the model's Conv2d/Linear layers (:func:`mcsim.engine.convert.crossbar_layers`),
    required by a layer sweep (``sweep.layers``); when given, every point's per-layer patterns are
    checked against them too. Raises ``ValueError`` (``LayerNameError`` for a pattern that matches no
    layer) naming the field.
    """
    sweep = scenario.sweep
    targets = None
    if sweep.layers is not None:
        if layer_names is None:
            raise ValueError("sweep.layers: the layer sweep needs the model's layer names: pass layer_names "
                             "(the runner loads the model for them)")
        targets = sweep.layers.select(list(layer_names))
    plan, problems = _build(scenario.hardware, sweep, targets)
    if problems:  # a layer sweep's points (validated here), or a scenario built without validation
        raise ScenarioError(f"scenario {scenario.name!r}", problems)
    if layer_names is not None:
        seen = set()
        for p in plan.points:
            key = canonical_json(p.hardware.layers)
            if key not in seen:
                seen.add(key)
                check_patterns(p.hardware.layers, list(layer_names), "hardware.layers")
    return plan
