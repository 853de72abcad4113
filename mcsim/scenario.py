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
    trials: 20         # or adaptive: {target_se: 0.002, min: 10, max: 2000}
    metric: top1       # top5, mse, perplexity or {factory: pkg.mod:fn}: what a chip is scored by
    execution: {shard_images: 500, trials_per_task: 10, device: auto}
    output: outputs/quickstart.zarr   # or {path: ..., per_image: true}: also each image's outcome

``load_scenario`` / ``parse_scenario`` turn such a file into a validated, frozen ``Scenario``;
every problem raises ``ScenarioError`` with one ``<file>: <field path>: <message>`` line per
problem. Every sweep point is validated at load time (its ``Hardware`` is built), and the
sweep values are normalised to their validated form (``0`` -> ``0.0`` for a float setting).

``Scenario.text`` is the canonical YAML of the scenario (all defaults written out), and
``scenario_fingerprint`` hashes everything that can change results (all but ``execution``,
``output`` and ``per_image``, save ``execution.chips`` when it is ``common``, and ``metric`` unless
it is ``top1``).

This module must stay light: it does not import torch, ray or zarr itself. The sweep's schema
and expansion are :mod:`mcsim.sweep`'s, the validation messages :mod:`mcsim.validation`'s (both
below this module: neither imports it); their names are re-exported here.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from mcsim import tables
from mcsim.hardware import Hardware
from mcsim.specs import DataSpec, ModelSpec
from mcsim.sweep import RESERVED_DIMS, Sweep, dim_name, dim_name_problems, normalized_sweep
from mcsim.validation import ScenarioError, StrictModel, canonical_json, format_validation_error

__all__ = [
    "AdaptiveTrials",
    "CLASSIFICATION",
    "Execution",
    "FactoryMetric",
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

#: Top-level fields that never change results (left out of the fingerprint).
NON_RESULT_FIELDS = frozenset({"execution", "output", "per_image"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: The classification metrics: the store counts both top-1 and top-5 hits; ``metric`` names the one
#: adaptive trials stop on.
CLASSIFICATION = ("top1", "top5")
#: The built-in non-classification metrics and the function of the mean loss a chip is scored by
#: (docs/physics.md section 14): mse = mean squared error, perplexity = exp(mean token NLL).
LOSS_METRICS = {"mse": "identity", "perplexity": "exp"}
_METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
#: Names a factory metric cannot take: the result store's own variables, and the built-in metrics.
_RESERVED_METRIC_NAMES = frozenset(CLASSIFICATION) | frozenset(LOSS_METRICS) | {
    "n_images", "n_trials", "complete", "label", "moments", "calibrated", "analog", "trial"}


# --------------------------------------------------------------------------------------
# schema


class Execution(StrictModel):
    """How the work is cut into tasks and run; never changes results, save ``chips`` (how chips are
    keyed, docs/physics.md section 14), which the fingerprint holds."""

    shard_images: int = Field(1000, ge=1, description="images per task")
    trials_per_task: int = Field(10, ge=1, description="Monte Carlo trials per task")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_task: float = Field(1.0, gt=0, description="GPUs a task reserves (ray); fractions share a GPU")
    workers: Optional[int] = Field(None, ge=1, description="local worker processes; null = one per core")
    max_retries: int = Field(3, ge=0, description="retries of a failed task")
    chips: Literal["common", "per_point"] = Field(
        "common", description="common: chip t is the same manufactured chip (the same draws) at every sweep "
                              "point, so differences between points are paired chip by chip; per_point: each "
                              "point draws its own chips (stores written before this setting)")


class AdaptiveTrials(StrictModel):
    """Adaptive trials (docs/physics.md section 14): a point runs chips ``0, 1, 2, ...`` until the SE of
    its mean top-1 accuracy (chips and images) is at most ``target_se``, with at least ``min`` and at
    most ``max`` chips. The stop is checked after each block of ``execution.trials_per_task`` chips."""

    target_se: float = Field(gt=0, description="stop once the mean's SE is at most this (in the metric's units: "
                                               "a fraction for top1/top5, 0.002 is 0.2 points)")
    min: int = Field(10, ge=2, description="chips run before the first stop check (the chip spread needs two)")
    max: int = Field(ge=2, description="chips run at most (the store's trial dim)")

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"max: {self.max} is below min {self.min}; give max >= min")
        return self


class FactoryMetric(StrictModel):
    """A user metric (docs/physics.md section 14): ``fn(outputs, targets, **kwargs) -> values``, where
    ``outputs`` are the model's outputs with a leading chip dim ``(C, B, ...)`` (C = 1 for the digital
    model), ``targets`` the batch's targets ``(B, ...)``, and ``values`` one number per chip and sample
    ``(C, B)``; a chip's score is the mean over the samples."""

    factory: str = Field(description="'package.module:function' of fn(outputs, targets, **kwargs) -> (C, B) values")
    name: Optional[str] = Field(None, description="the metric's name in the store and report; default: the "
                                                  "function's name")
    higher_is_better: bool = Field(False, description="true for a score (accuracy-like), false for a loss")
    kwargs: dict = Field(default_factory=dict, description="extra keyword arguments of the function")

    @model_validator(mode="after")
    def _name(self):
        module_name, _, attr = self.factory.partition(":")
        if not module_name or not attr:
            raise ValueError(f"factory: {self.factory!r} is not of the form 'package.module:function'")
        if self.name is None:
            object.__setattr__(self, "name", attr.rpartition(".")[2].lower())
        if not _METRIC_NAME_RE.match(self.name) or self.name in _RESERVED_METRIC_NAMES:
            raise ValueError(f"name: {self.name!r} cannot name a metric: use lower-case letters, digits and '_', "
                             f"not one of {', '.join(sorted(_RESERVED_METRIC_NAMES))}")
        return self


def metric_info(metric) -> Optional[dict]:
    """What the store and the report need of a non-classification ``metric``: ``name``,
    ``transform`` of the mean loss (``identity`` or ``exp``), ``lower_is_better``; None for top1/top5."""
    if isinstance(metric, FactoryMetric):
        return {"name": metric.name, "transform": "identity", "lower_is_better": not metric.higher_is_better}
    if metric in LOSS_METRICS:
        return {"name": metric, "transform": LOSS_METRICS[metric], "lower_is_better": True}
    return None


def _trials_kind(value) -> str:
    """``trials`` is a number of chips, or a mapping of adaptive settings (errors name one form only)."""
    return "adaptive" if isinstance(value, (dict, AdaptiveTrials)) else "number"


class Scenario(StrictModel):
    """A whole study, as read from a scenario YAML file."""

    name: str = Field(description="identifier of the study: letters, digits, '_', '-', '.'")
    seed: int = Field(ge=0, description="root of every random stream of the study")
    model: ModelSpec
    data: DataSpec
    hardware: Hardware = Hardware()
    sweep: Sweep = Sweep()
    trials: Annotated[Union[Annotated[int, Tag("number")], Annotated[AdaptiveTrials, Tag("adaptive")]],
                      Discriminator(_trials_kind)] = Field(
        description="Monte Carlo trials (chips) per sweep point: a number, or {target_se, min, max} to run "
                    "chips until the mean's SE reaches target_se")
    metric: Union[Literal["top1", "top5", "mse", "perplexity"], FactoryMetric] = Field(
        "top1", description="what a chip is scored by (docs/physics.md section 14): top1/top5 accuracy (both "
                            "are stored; adaptive trials stop on this one), mse (mean squared error of the "
                            "outputs against float targets), perplexity (exp of the mean token NLL of logits "
                            "against class-index targets), or {factory: 'pkg.mod:fn', name, higher_is_better}")
    energy: bool = Field(
        True, description="count each chip's operations and price the energy per image (docs/physics.md "
                          "section 12; hardware.energy); false skips the counting (~5-15 % faster on the CPU)")
    execution: Execution = Execution()
    output: str = Field(
        min_length=1, description="result store: a path or an fsspec URL; default outputs/<name>.zarr"
    )
    per_image: bool = Field(
        False, description="also store each chip's top-1 outcome per image, packed as bits (written as "
                           "output: {path: ..., per_image: true})")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            for key in ("hardware", "sweep", "execution"):
                if key in data and data[key] is None:
                    del data[key]
            if isinstance(data.get("output"), dict):  # output: {path: ..., per_image: ...}
                out = dict(data["output"])
                unknown = sorted(set(out) - {"path", "per_image"})
                if unknown:
                    raise ValueError(f"output: {', '.join(map(str, unknown))} is not a setting of output (known: "
                                     "path, per_image)")
                if "per_image" in out and "per_image" in data:
                    raise ValueError("output.per_image: given twice (also at the top level); give it once")
                data["output"] = out.get("path")
                if "per_image" in out:
                    data["per_image"] = out["per_image"]
            if data.get("output") is None and isinstance(data.get("name"), str):
                data["output"] = f"outputs/{data['name']}.zarr"
        return data

    @field_validator("trials")
    @classmethod
    def _trials(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"give at least 1 trial (got {v}), or {{target_se, min, max}} for adaptive trials")
        return v

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
        sweep = normalized_sweep(self.hardware, self.sweep)  # raises ValueError, one line per problem
        if sweep is not self.sweep:
            object.__setattr__(self, "sweep", sweep)
        return self

    @model_validator(mode="after")
    def _metric(self):
        if self.metric in CLASSIFICATION:
            if self.adaptive is not None and self.adaptive.target_se >= 1:
                raise ValueError(f"trials.target_se: {self.adaptive.target_se} is not below 1; an accuracy's SE is "
                                 "a fraction (0.002 is 0.2 points)")
        elif self.per_image:
            raise ValueError(f"output.per_image: keeps top-1 outcomes per image, which metric {self.metric_name!r} "
                             "has not; leave it out")
        return self

    @property
    def metric_name(self) -> str:
        """The metric's name: top1, top5, mse, perplexity or a factory metric's name."""
        return self.metric.name if isinstance(self.metric, FactoryMetric) else self.metric

    @property
    def metric_info(self) -> Optional[dict]:
        """:func:`metric_info` of the scenario's metric (None for top1/top5)."""
        return metric_info(self.metric)

    @property
    def max_trials(self) -> int:
        """The chips a point runs at most: ``trials``, or ``trials.max`` when adaptive."""
        return self.trials.max if isinstance(self.trials, AdaptiveTrials) else self.trials

    @property
    def adaptive(self) -> Optional[AdaptiveTrials]:
        """The adaptive trials' settings; None for a fixed number of trials."""
        return self.trials if isinstance(self.trials, AdaptiveTrials) else None

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


def scenario_text(scenario: Scenario) -> str:
    """Canonical YAML of the scenario (field order of the schema, all defaults written out)."""
    return yaml.safe_dump(scenario.canonical(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def scenario_fingerprint(scenario: Scenario) -> str:
    """sha256 hex of the canonical JSON of everything that can change results (``metric`` only when
    it is not ``top1``, so stores written before the setting keep their fingerprint).

    ``execution``, ``output`` and ``per_image`` are left out: how the work is cut, where it is
    written and what more it keeps never change a number. ``execution.chips`` does (it keys the
    chips): ``common`` is hashed in, ``per_point`` is not, so a store written before the setting existed (its chips keyed per
    point) keeps its fingerprint and resumes with ``chips: per_point`` only.
    """
    data = {k: v for k, v in scenario.canonical().items() if k not in NON_RESULT_FIELDS}
    if data["metric"] == "top1":  # the default, and all there was before the setting: stores keep their fingerprint
        del data["metric"]
    if scenario.execution.chips != "per_point":
        data["chips"] = scenario.execution.chips
    swept = sorted({str(v) for key, vals in {**scenario.sweep.grid, **scenario.sweep.zip}.items()
                    if key.endswith(".file") for v in vals if v is not None})
    if swept:  # swept device tables: their contents, as the hardware's own tables (docs/physics.md 13.1)
        data["swept_tables"] = {path: tables.read(path).sha256 for path in swept}
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
