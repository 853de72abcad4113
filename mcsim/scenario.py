"""The scenario file: one YAML document describing a whole study.

A scenario names the network (``model``), the images (``data``), the base chip (``hardware``),
the hardware settings swept (``sweep``), the number of Monte Carlo ``trials`` per sweep point,
how the work is cut and run (``execution``) and where results go (``output``)::

    name: quickstart
    seed: 0
    model: {name: builtin:mnist-cnn}
    data: {name: mnist5k, split: test, limit: 1000, batch_size: 250,
           calibration: {split: train, count: 500}}
    hardware: {mapping: differential, adc: {bits: 8}, error: {model: proportional, sigma: 0.05}}
    sweep:
      grid: {hardware.error.sigma: [0.0, 0.05, 0.1], hardware.mapping: [differential, offset]}
      zip: {}            # same-length lists swept together, along one dim named `point`
    trials: 20
    execution: {shard_images: 500, trials_per_task: 10, device: auto}
    output: outputs/quickstart.zarr

``load_scenario`` / ``parse_scenario`` turn such a file into a validated, frozen ``Scenario``;
every problem raises ``ScenarioError`` with one ``<file>: <field path>: <message>`` line per
problem. Every sweep point is validated at load time (its ``Hardware`` is built), and the
sweep values are normalised to their validated form (``0`` -> ``0.0`` for a float setting).

``Scenario.text`` is the canonical YAML of the scenario (all defaults written out), and
``scenario_fingerprint`` hashes everything that can change results (all but ``execution``
and ``output``).

This module must stay light: it does not import torch, ray or zarr itself.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mcsim.hardware import Hardware
from mcsim.specs import DataSpec, ModelSpec

__all__ = [
    "Execution",
    "RESERVED_DIMS",
    "Scenario",
    "ScenarioError",
    "Sweep",
    "canonical_json",
    "dim_name",
    "dim_name_problems",
    "format_validation_error",
    "load_scenario",
    "parse_scenario",
    "scenario_fingerprint",
    "scenario_text",
]

#: Dimension names the result store uses itself; no sweep key may be named like them.
RESERVED_DIMS = ("trial", "layer", "point")

#: Top-level fields that never change results (left out of the fingerprint).
NON_RESULT_FIELDS = frozenset({"execution", "output"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A message that starts with a field path, e.g. "slices: 16 slices exceed ..." (hardware.py style).
_PATH_PREFIX_RE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): (.*)$", re.S)


# --------------------------------------------------------------------------------------
# errors


class ScenarioError(ValueError):
    """An invalid scenario. ``str(err)`` has one ``<source>: <problem>`` line per problem."""

    def __init__(self, source: str, problems: Union[str, list[str]]):
        self.source = str(source)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(f"{self.source}: {p}" for p in self.problems))


def _strip_pydantic_prefix(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _join_loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _merge_path(loc_path: str, msg: str) -> tuple[str, str]:
    """'hardware' + 'slices: too many' -> ('hardware.slices', 'too many'); overlap-aware."""
    m = _PATH_PREFIX_RE.match(msg)
    if not m:
        return loc_path, msg
    prefix, rest = m.group(1), m.group(2)
    if not loc_path:
        return prefix, rest
    loc_parts = loc_path.split(".")
    pre_parts = prefix.split(".")
    # 'hardware.adc' + 'adc.limits' -> 'hardware.adc.limits'
    for k in range(min(len(loc_parts), len(pre_parts)), 0, -1):
        if loc_parts[-k:] == pre_parts[:k]:
            return ".".join(loc_parts + pre_parts[k:]), rest
    return f"{loc_path}.{prefix}", rest


def _unwrap(annotation):
    """The BaseModel class behind an annotation (through Optional/Union), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def _fields_at(root: type[BaseModel], loc) -> Optional[list[str]]:
    """Field names of the model reached by following ``loc`` from ``root`` (None if unknown)."""
    model = root
    for part in loc:
        if not isinstance(part, str) or model is None or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return None if model is None else list(model.model_fields)


def _short(value: Any) -> Optional[str]:
    if value is None or isinstance(value, (bool, int, float, str)):
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return None


def format_validation_error(err: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    """One ``<field path>: <message>`` line per pydantic error (multi-line messages split)."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e.get("loc", ()))
        msg = _strip_pydantic_prefix(str(e.get("msg", "")))
        etype = e.get("type", "")
        if etype == "extra_forbidden" and loc and isinstance(loc[-1], str):
            fields = _fields_at(root, loc[:-1])
            if fields:
                close = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.6)
                msg += f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
        elif etype not in ("missing", "extra_forbidden", "value_error", "assertion_error"):
            shown = _short(e.get("input"))
            if shown is not None:
                msg += f" (got {shown})"
        path = _join_loc(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        for line in msg.splitlines() or [""]:
            p, m = _merge_path(path, line)
            lines.append(f"{p}: {m}" if p else m)
    return lines


# --------------------------------------------------------------------------------------
# schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Execution(_Strict):
    """How the work is cut into tasks and run; never changes results."""

    shard_images: int = Field(1000, ge=1, description="images per task")
    trials_per_task: int = Field(10, ge=1, description="Monte Carlo trials per task")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_task: float = Field(1.0, gt=0, description="GPUs a task reserves (ray); fractions share a GPU")
    workers: Optional[int] = Field(None, ge=1, description="local worker processes; null = one per core")
    max_retries: int = Field(3, ge=0, description="retries of a failed task")


def _hardware_setting_problem(key: str) -> Optional[str]:
    """Why ``key`` is not a valid dotted path to a Hardware setting (None if it is)."""
    parts = key.split(".")
    if parts[0] != "hardware" or len(parts) < 2:
        return "sweep keys must be dotted paths into the hardware, starting with 'hardware.'"
    if not all(_IDENT_RE.match(p) for p in parts[1:]):
        return "not a valid dotted path"
    model: Optional[type[BaseModel]] = Hardware
    walked = ["hardware"]
    for i, part in enumerate(parts[1:]):
        if model is None:
            return f"'{'.'.join(walked)}' is a single setting, not a group of settings"
        fields = list(model.model_fields)
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1, cutoff=0.6)
            hint = f"did you mean '{'.'.join(walked + [close[0]])}'?" if close else f"known: {', '.join(fields)}"
            return f"unknown hardware setting '{part}' in '{'.'.join(walked)}' ({hint})"
        walked.append(part)
        model = _unwrap(model.model_fields[part].annotation)
    return None


def dim_name(key: str) -> str:
    """The sweep dim/coordinate name of a sweep key: its last dotted component."""
    return key.rsplit(".", 1)[-1]


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


class Sweep(_Strict):
    """Hardware settings swept: ``grid`` (cartesian product) and ``zip`` (lists taken together).

    Keys are dotted paths into the scenario starting with ``hardware.``. Each grid key gives a
    result dim named by its last component; zip keys share one dim named ``point``, each giving
    a coordinate along it named by its last component.
    """

    grid: dict[str, list] = Field(default_factory=dict)
    zip: dict[str, list] = Field(default_factory=dict)

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
        return not self.grid and not self.zip

    def keys(self) -> list[str]:
        """All swept keys: grid keys then zip keys."""
        return list(self.grid) + list(self.zip)


class Scenario(_Strict):
    """A whole study, as read from a scenario YAML file."""

    name: str = Field(description="identifier of the study: letters, digits, '_', '-', '.'")
    seed: int = Field(ge=0, description="root of every random stream of the study")
    model: ModelSpec
    data: DataSpec
    hardware: Hardware = Hardware()
    sweep: Sweep = Sweep()
    trials: int = Field(ge=1, description="Monte Carlo trials per sweep point")
    execution: Execution = Execution()
    output: str = Field(
        min_length=1, description="result store: a path or an fsspec URL; default outputs/<name>.zarr"
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            for key in ("hardware", "sweep", "execution"):
                if key in data and data[key] is None:
                    del data[key]
            if data.get("output") is None and isinstance(data.get("name"), str):
                data["output"] = f"outputs/{data['name']}.zarr"
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str):
        if len(v) > 128 or not _NAME_RE.match(v):
            raise ValueError(
                "name: use letters, digits, '_', '-' and '.', starting with a letter or digit "
                "(at most 128 characters)"
            )
        return v

    @model_validator(mode="after")
    def _sweep_points(self):
        # Build (and so validate) the Hardware of every sweep point; store the sweep values in
        # their validated form so that the canonical text and fingerprint do not depend on
        # spelling (0 vs 0.0).
        from mcsim.sweep import normalized_sweep

        sweep = normalized_sweep(self.hardware, self.sweep)  # raises ValueError, one line per problem
        if sweep is not self.sweep:
            object.__setattr__(self, "sweep", sweep)
        return self

    # ---- canonical forms ----

    def canonical(self) -> dict:
        """The scenario as plain JSON-compatible data, every default written out."""
        return self.model_dump(mode="json")

    @property
    def text(self) -> str:
        """Canonical YAML text: reloading it gives an equal scenario."""
        return scenario_text(self)

    @property
    def fingerprint(self) -> str:
        return scenario_fingerprint(self)


def canonical_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def scenario_text(scenario: Scenario) -> str:
    """Canonical YAML of the scenario (field order of the schema, all defaults written out)."""
    return yaml.safe_dump(scenario.canonical(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def scenario_fingerprint(scenario: Scenario) -> str:
    """sha256 hex of the canonical JSON of everything that can change results.

    ``execution`` and ``output`` are left out: how the work is cut and where it is written
    never changes a number.
    """
    data = {k: v for k, v in scenario.canonical().items() if k not in NON_RESULT_FIELDS}
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# YAML reading


class _Loader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys and reads 1e-3 as a float (as YAML 1.2 does)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"found duplicate key {key!r} (first at line {first.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_error(source: str, err: yaml.YAMLError) -> ScenarioError:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        problem = err.problem or "invalid YAML"
        if err.context:
            where = ""
            if err.context_mark is not None and err.context_mark.line != mark.line:
                where = f" at line {err.context_mark.line + 1}"
            problem += f" ({err.context}{where})"
        kind = "YAML error" if isinstance(err, yaml.constructor.ConstructorError) else "YAML syntax error"
        return ScenarioError(source, f"line {mark.line + 1}, column {mark.column + 1}: {kind}: {problem}")
    return ScenarioError(source, f"YAML syntax error: {err}")


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate scenario YAML text; ``source`` names it in error messages."""
    source = str(source)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from None
    if data is None:
        raise ScenarioError(source, "the scenario is empty")
    if not isinstance(data, dict):
        raise ScenarioError(
            source, f"a scenario must be a YAML mapping of settings (name:, model:, ...), not a {type(data).__name__}"
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ScenarioError(source, [f"{k!r}: top-level keys must be strings" for k in bad_keys])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(source, format_validation_error(err, Scenario)) from None
    except ScenarioError as err:  # raised outside pydantic's wrapping (should not happen)
        raise ScenarioError(source, err.problems) from None
    return scenario


def load_scenario(path: Union[str, os.PathLike]) -> Scenario:
    """Read, parse and validate a scenario YAML file."""
    source = str(path)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(source, "scenario file not found") from None
    except IsADirectoryError:
        raise ScenarioError(source, "is a directory, not a scenario file") from None
    except UnicodeDecodeError as err:
        raise ScenarioError(source, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ScenarioError(source, f"cannot read scenario file: {err.strerror or err}") from None
    return parse_scenario(text, source=source)
