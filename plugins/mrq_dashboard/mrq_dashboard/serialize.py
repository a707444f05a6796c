"""JSON for the API: ids and dates as strings, anything else BSON can hold as its JSON form or its text."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

__all__ = ["jsonable", "isodate"]


def isodate(value: datetime.datetime) -> str:
    """A naive UTC datetime (as MongoDB returns them) as ISO text with a ``Z``."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` with ObjectIds and datetimes as strings, recursively (tuples and sets as lists)."""
    if depth > 64:
        return repr(value)
    if isinstance(value, str) or value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime.datetime):
        return isodate(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
