"""Strict check of an object against the Kubernetes API schema, as the Kubernetes project's
own generated Python client describes it (kubernetes.client.models: every field's JSON name
and type). Unknown fields and wrong types are errors: a field the API server would drop or
refuse must fail the test, not pass silently."""

from __future__ import annotations

import re
from typing import Any

SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
}


def check(obj: Any, model: str = "V1Pod", where: str = "") -> list[str]:
    """Every problem in `obj` as a `path: what` line; [] when it matches `model`."""
    import kubernetes.client.models as models

    return _check(obj, model, where or model, models)


def _check(value: Any, kind: str, where: str, models: Any) -> list[str]:
    if m := re.fullmatch(r"List\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in _check(v, m[1], f"{where}[{i}]", models)]
    if m := re.fullmatch(r"Dict\[str, (.+)\]", kind):
        if not isinstance(value, dict):
            return [f"{where}: expected a map, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in _check(v, m[1], f"{where}.{k}", models)]
    if kind in SCALARS:
        ok = isinstance(value, SCALARS[kind]) and not (kind == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {kind}, got {value!r:.40}"]
    cls = getattr(models, kind, None)
    if cls is None:
        return [f"{where}: unknown model {kind}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({kind}), got {type(value).__name__}"]
    by_json = {j: py for py, j in cls.attribute_map.items()}
    problems = []
    for key, v in value.items():
        if key not in by_json:
            problems.append(f"{where}.{key}: no such field in {kind}")
            continue
        problems += _check(v, cls.openapi_types[by_json[key]], f"{where}.{key}", models)
    return problems
