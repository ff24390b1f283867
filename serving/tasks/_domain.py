"""The values a task's raw input may hold, read from its ``Record`` (the task route's
pydantic model), and one vectorised check of a raw batch against them, which every
protocol (V2, TF-Serving, the task route) goes through.

The Record's JSON schema is the source: a number's bounds (``Field`` ge/gt/le/lt), an
integer's whole numbers, a bool's 0 or 1, and a ``Literal``'s category index (0 to n-1 in
the order declared) each bound one raw column; a list field (a price window, an image)
bounds every element of the raw input alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.errors import InvalidInput


@dataclass(frozen=True)
class Bound:
    """What one raw column (or every raw element) may hold."""

    name: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself excluded (``gt``)
    high_open: bool = False  # (``lt``)
    whole: bool = False
    kind: str = "number"  # number, integer, bool or category
    categories: tuple[str, ...] = ()

    def allowed(self) -> str:
        """The allowed values in words, for the error."""
        if self.kind == "bool":
            return "0 or 1 (false or true)"
        if self.kind == "category":
            return (f"a category index, a whole number from 0 to {len(self.categories) - 1} "
                    f"({', '.join(self.categories)})")
        sides = ((">" if self.low_open else ">=", self.low),
                 ("<" if self.high_open else "<=", self.high))
        words = " and ".join(f"{op} {value:g}" for op, value in sides if value is not None)
        return f"a whole number {words}".strip() if self.whole else words or "a number"

    def describe(self) -> dict[str, Any]:
        """This bound as model metadata states it, in JSON Schema's words: the field's
        name and kind, its bounds, ``whole`` numbers, and ``categories`` (index order)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        if self.whole:
            out["whole"] = True
        if self.categories:
            out["categories"] = list(self.categories)
        return out

    def limits(self) -> tuple[np.float32, np.float32]:
        """The lowest and highest float32 accepted (an excluded bound moved inside when it is
        exact in float32; a closed one rounded, as the Record's values are)."""
        low = np.float32(-np.inf if self.low is None else self.low)
        high = np.float32(np.inf if self.high is None else self.high)
        if self.low_open and float(low) == self.low:
            low = np.nextafter(low, np.float32(np.inf))
        if self.high_open and float(high) == self.high:
            high = np.nextafter(high, np.float32(-np.inf))
        return low, high


class Domain:
    """Bounds per raw column (the last axis), or one bound for every element."""

    def __init__(self, bounds: tuple[Bound, ...], elementwise: bool = False) -> None:
        self.bounds = bounds
        self.elementwise = elementwise
        limits = np.array([b.limits() for b in bounds], np.float32)
        self.low, self.high = limits[:, 0], limits[:, 1]
        self.whole = np.flatnonzero([b.whole for b in bounds])

    def describe(self) -> dict[str, Any]:
        """The domain as an input tensor's metadata ``parameters``: ``columns`` in order,
        or the ``elements`` bound every element shares."""
        if self.elementwise:
            return {"elements": self.bounds[0].describe()}
        return {"columns": [b.describe() for b in self.bounds]}

    def check(self, array: np.ndarray) -> None:
        """Raise ``InvalidInput`` naming the first value outside its bound (vectorised)."""
        if (array >= self.low).all() and (array <= self.high).all() and self._whole(array).all():
            return
        bad = ~((array >= self.low) & (array <= self.high))  # NaN counts as outside
        if len(self.whole):
            if self.elementwise:
                bad |= ~self._whole(array)
            else:
                bad[..., self.whole] |= ~self._whole(array)
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        if self.elementwise:
            bound = self.bounds[0]
            rule, where = f"hold values {bound.allowed()}", f" at {list(at[1:])}"
        else:
            bound = self.bounds[at[-1]]
            rule, where = f"be {bound.allowed()}", ""
        raise InvalidInput(f"{bound.name} must {rule}; got {float(array[at]):g} "
                           f"in example {at[0]}{where}")

    def _whole(self, array: np.ndarray) -> np.ndarray:
        if not len(self.whole):
            return np.ones(1, bool)
        values = array if self.elementwise else array[..., self.whole]
        return values == np.rint(values)


@cache
def record_domain(record: type[BaseModel], fields: tuple[str, ...]) -> Domain:
    """The domain of a raw input whose columns are ``fields`` of ``record``, in order; a
    single list field bounds every element."""
    properties = record.model_json_schema()["properties"]
    unknown = [f for f in fields if f not in properties]
    if unknown:
        raise TypeError(f"{record.__name__} has no field(s) {unknown}")
    schemas = [_without_null(properties[f]) for f in fields]
    if len(fields) == 1 and schemas[0].get("type") == "array":
        items = schemas[0]
        while items.get("type") == "array":
            items = _without_null(items["items"])
        return Domain((_bound(fields[0], items),), elementwise=True)
    return Domain(tuple(_bound(f, s) for f, s in zip(fields, schemas, strict=True)))


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its ``null`` alternative."""
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    if len(options) != 1:
        raise TypeError(f"a raw column needs one kind of value, got {schema}")
    return options[0]


def _bound(name: str, schema: dict[str, Any]) -> Bound:
    if "enum" in schema:
        categories = tuple(str(v) for v in schema["enum"])
        return Bound(name, 0, len(categories) - 1, whole=True, kind="category",
                     categories=categories)
    kind = schema.get("type")
    if kind == "boolean":
        return Bound(name, 0, 1, whole=True, kind="bool")
    if kind not in ("integer", "number"):
        raise TypeError(f"field '{name}' ({kind}) cannot be a numeric raw column")
    return Bound(
        name,
        low=schema.get("minimum", schema.get("exclusiveMinimum")),
        high=schema.get("maximum", schema.get("exclusiveMaximum")),
        low_open="exclusiveMinimum" in schema and "minimum" not in schema,
        high_open="exclusiveMaximum" in schema and "maximum" not in schema,
        whole=kind == "integer",
        kind=kind,
    )
