"""Strict JSON for every file the run writes: no NaN or Infinity tokens, which strict parsers
(JavaScript, jq, Go, Rust) reject. A non-finite float is written as null and its key is listed,
with what it was, in the enclosing dict's "nonfinite" field: {"loss": null, "nonfinite":
{"loss": "NaN"}}. No jax import, so evaluators and tools use it without one.
"""

import json
import math
import os

import numpy as np


def to_python(value):
    """jax / numpy scalars and arrays -> float, int, bool or nested lists (JSON-ready)."""
    if (
        isinstance(value, (np.ndarray, np.generic))
        or hasattr(value, "__jax_array__")
        or (type(value).__module__.startswith("jax") and hasattr(value, "__array__"))
    ):
        value = np.asarray(value)
        return value.item() if value.size == 1 else value.tolist()
    return value


def read_json(path, error=ValueError):
    """The parsed JSON file at `path`; a file that cannot be read or parsed raises `error` naming
    the path (and the line and column of a syntax error)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read: {e}") from e


NONFINITE_FIELD = "nonfinite"  # {name: "NaN" | "Infinity" | "-Infinity"}, each value written null
_NONFINITE_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}  # anything else: NaN


def strict_json(value):
    """A JSON-ready copy of `value` without NaN or infinities: in every dict, a non-finite float
    becomes None and its key is listed, with what it was, under the dict's "nonfinite" field.
    jax / numpy values become Python values (`to_python`)."""
    value = to_python(value)
    if isinstance(value, dict):
        out, reasons = {}, {}
        for key, v in value.items():
            v = to_python(v)
            if isinstance(v, float) and not math.isfinite(v):
                out[key], reasons[key] = None, _NONFINITE_NAMES.get(v, "NaN")
            else:
                out[key] = strict_json(v)
        if reasons:
            out[NONFINITE_FIELD] = {**out.get(NONFINITE_FIELD, {}), **reasons}
        return out
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a bare value has no dict to carry the reason; callers pass dicts
    return value


def dumps(value, **kwargs) -> str:
    """json.dumps of `strict_json(value)`; raises rather than ever writing NaN."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def read_jsonl(path) -> list[dict]:
    """The complete rows of a JSON lines file ([] if missing); a torn last line is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows


def truncate_jsonl(path, last_step: int) -> int:
    """Drops the rows of `path` whose "step" is after `last_step` (and a torn last line);
    returns how many were dropped. The file is rewritten (atomically) only if something goes."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = [x for x in lines if x.endswith("\n") and json.loads(x).get("step", 0) <= last_step]
    if len(keep) == len(lines):
        return 0
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(tmp, path)
    return len(lines) - len(keep)


def write_json(path, value, *, indent: int | None = 1) -> str:
    """Writes `value` as strict JSON to `path` atomically (a reader never sees half a file)."""
    text = dumps(value, indent=indent, default=str)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return path
