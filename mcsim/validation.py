"""Validation messages shared by the scenario schema and its sweep: one ``<field path>: <message>``
line per problem, a strict pydantic base, and the canonical JSON that fingerprints hash.

Pure Python and pydantic: the bottom of the study layer (:mod:`mcsim.sweep` and
:mod:`mcsim.scenario` import it; it imports neither).
"""
from __future__ import annotations

import difflib
import json
import re
import typing
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from mcsim.errors import InputError

__all__ = ["ScenarioError", "StrictModel", "canonical_json", "format_validation_error", "model_behind"]

# A message that starts with a field path, e.g. "slices: 16 slices exceed ..." (hardware.py style).
_PATH_PREFIX_RE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): (.*)$", re.S)


class ScenarioError(InputError, ValueError):
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


def model_behind(annotation):
    """The BaseModel class behind an annotation (through Optional/Union), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_behind(arg)
        if found is not None:
            return found
    return None


def _fields_at(root: type[BaseModel], loc) -> Optional[list[str]]:
    """Field names of the model reached by following ``loc`` from ``root`` (None if unknown)."""
    model = root
    for part in loc:
        if not isinstance(part, str) or model is None or part not in model.model_fields:
            return None
        model = model_behind(model.model_fields[part].annotation)
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


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def canonical_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
