"""json.dumps for plain data without importing json (which pulls in re and enum: ~8 ms of
the ~40 ms attach budget). Strings go through the C escaper json itself uses, so the
output is what `json.dumps(value, ensure_ascii=True, separators=(",", ":"))` writes."""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_quote = _json.encode_basestring_ascii


def dumps(value: Any) -> str:
    """One line of JSON for None, bool, int, float, str, list, tuple and dict (str keys)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "null"  # not JSON; never produced by crashcart's records
        return float.__repr__(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_quote(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
