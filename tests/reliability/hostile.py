"""Hostile request bodies for every POST route of the OpenAPI schema, as hypothesis
strategies: random JSON, schema-shaped bodies with wrong types, mutated valid bodies, raw
literals JSON does not allow (NaN, Infinity, huge numbers, deep nesting), invalid UTF-8 and
truncated JSON."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st


class Raw(str):
    """A JSON fragment sent verbatim (what ``json.dumps`` would refuse or change)."""


RAW_LITERALS = [Raw(s) for s in ("NaN", "-Infinity", "Infinity", "1e999", "-1e999", "1e-400",
                                 "-0", "9" * 5000, "0x10", "+1", ".5", "1.", "undefined")]


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "1" + "]" * depth)


#: fixed hostile bodies every POST route gets on every run (bytes, sent as they are)
FIXED: list[bytes] = [
    b"", b" ", b"null", b"[]", b"{}", b'"text"', b"0", b"NaN", b"{\"a\":", b"\xff\xfe{}",
    b"\xef\xbb\xbf{}", b'{"records": [' + b"[" * 100_000, nested(900).encode(),
    nested(20_000).encode(), ("9" * 5000).encode(), b'{"\\ud800": "\\udfff"}', b"a=1&b=2",
    b"<xml/>", b"\x00" * 64, b'{"inputs": [{"name": "x", "shape": [99999999999999999999],'
    b' "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "x", "shape": [-1, 9], "datatype": "FP32", "data": []}]}',
]

CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=utf-16",
                 "application/xml", "", "application/octet-stream"]

leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))
json_values = st.recursive(
    leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.text(max_size=8), kids, max_size=4), max_leaves=12)
unicode = st.text(st.characters(categories=["Cs", "Cc", "Co", "Cn", "Mn", "So", "Zl"]),
                  min_size=1, max_size=40)
hostile_strings = st.one_of(
    unicode,  # lone surrogates, control and private-use characters, unassigned code points
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "\ud800", "a\udfffb", "\U0001d518",
                     "' OR 1=1 --", "../../etc/passwd", "%s%n", "${jndi:ldap://x}", "NaN"]),
    st.integers(1, 20_000).map(lambda n: "x" * n),
)
hostile_numbers = st.one_of(
    st.sampled_from(RAW_LITERALS),
    st.floats(),  # NaN and infinities too, written as their literals
    st.integers(min_value=2**62, max_value=2**70) | st.integers(-(2**70), -(2**62)),
    st.floats(min_value=3.4e38, max_value=1.7e308),  # past float32
    st.sampled_from([-1, -0.0, 5e-324, 1e-45, 2**31, 2**53 + 1]),
)
hostile_values: st.SearchStrategy[Any] = st.one_of(
    json_values, hostile_numbers, hostile_strings, st.integers(1, 3000).map(nested))


def dump(value: Any, ascii_only: bool = True) -> str:
    """JSON text of ``value`` with ``Raw`` fragments verbatim; NaN and infinities as the
    literals Python writes."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=ascii_only)}:{dump(v, ascii_only)}"
                 for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(value: Any, ascii_only: bool = True) -> bytes:
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")


def resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def from_schema(schema: dict[str, Any], spec: dict[str, Any], depth: int = 0
                ) -> st.SearchStrategy[Any]:
    """Values shaped like ``schema`` (its objects, arrays and field names) whose every part
    may instead be hostile: wrong types per field, missing and unknown fields."""
    schema = resolve(schema, spec)
    variants = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if variants:
        return st.one_of(*(from_schema(v, spec, depth) for v in variants))
    if depth > 6:
        return hostile_values
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        props = {k: from_schema(v, spec, depth + 1) | hostile_values
                 for k, v in schema["properties"].items()}
        required = set(schema.get("required", []))
        shaped = st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
        extra = st.dictionaries(st.text(max_size=8), hostile_values, max_size=2)
        return st.tuples(shaped, extra).map(lambda t: {**t[1], **t[0]}) | shaped
    if kind == "array":
        items = from_schema(schema.get("items", {}), spec, depth + 1) | hostile_values
        return st.lists(items, max_size=4)
    shaped_leaf = {"string": st.text(max_size=30), "integer": st.integers(),
                   "number": st.floats(), "boolean": st.booleans()}.get(kind or "", leaves)
    return shaped_leaf | hostile_values


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every location in a JSON value, the root first."""
    yield prefix
    children = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        yield from paths(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one location replaced by a hostile value, removed, or given an
    unknown key or item."""
    body = copy.deepcopy(valid)
    where = draw(st.sampled_from(list(paths(body))))
    value = draw(hostile_values)
    if not where:
        return value
    parent = _at(body, where[:-1])
    action = draw(st.sampled_from(["replace", "delete", "extra"]))
    if action == "replace":
        parent[where[-1]] = value
    elif action == "delete":
        del parent[where[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = value
    else:
        parent.append(value)
    return body


@st.composite
def poisoned(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one leaf replaced by a hostile value of the same JSON type, so that
    it passes type checks and reaches deeper code."""
    body = copy.deepcopy(valid)
    leaves = [p for p in paths(body) if p and not isinstance(_at(body, p), dict | list)]
    where = draw(st.sampled_from(leaves))
    current = _at(body, where)
    value = draw(hostile_strings if isinstance(current, str) else hostile_numbers
                 if isinstance(current, int | float) and not isinstance(current, bool)
                 else hostile_values)
    _at(body, where[:-1])[where[-1]] = value
    return body


def _at(value: Any, where: tuple[Any, ...]) -> Any:
    for key in where:
        value = value[key]
    return value


#: keys whose values ``variants`` leaves alone, so that the poisoned values get past them
KEEP = {"name", "datatype", "shape"}
PAYLOAD = {"data", "instances", "records"}


def _leafmap(value: Any, fn: Any, key: Any = None) -> Any:
    if isinstance(value, dict):
        return {k: _leafmap(v, fn, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_leafmap(v, fn, key) for v in value]
    return value if key in KEEP else fn(value)


def _rekey(value: Any, keys: set[str], fn: Any) -> Any:
    if isinstance(value, dict):
        return {k: fn(v) if k in keys else _rekey(v, keys, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_rekey(v, keys, fn) for v in value]
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def variants(valid: Any) -> list[Any]:
    """``valid`` with every string, or every number, poisoned alike, its payload nested past
    numpy's 64 dimensions, and any ``shape`` given 65 of them: values of the right JSON type
    that only deeper code can refuse."""
    out = [_leafmap(valid, lambda v: "\ud800" + v if isinstance(v, str) else v)]
    for bad in (Raw("1" + "0" * 400), Raw("NaN"), Raw("-Infinity"), 3.5e38, -1e308, 2**64):
        out.append(_leafmap(valid, lambda v, bad=bad: bad if _number(v) else v))
    out.append(_rekey(valid, PAYLOAD, lambda v: json.loads("[" * 70 + json.dumps(v) + "]" * 70)))
    out.append(_rekey(valid, {"shape"}, lambda v: [1] * 65))
    return out


def bodies(schema: dict[str, Any], spec: dict[str, Any], valid: Any | None
           ) -> st.SearchStrategy[bytes]:
    """Hostile bodies for one route: schema-shaped, mutated from ``valid``, random JSON,
    raw bytes, or ``valid`` truncated."""
    values = from_schema(schema, spec) | json_values
    text = st.builds(encode, values, st.booleans())
    raw = st.binary(max_size=200) | st.sampled_from(FIXED)
    options = [text, raw]
    if valid is not None:
        whole = encode(valid)
        poison = st.builds(encode, poisoned(valid), st.booleans())
        options += [poison, poison, poison, st.sampled_from(variants(valid)).map(encode),
                    st.builds(encode, mutated(valid), st.booleans()),
                    st.integers(0, len(whole) - 1).map(lambda n: whole[:n])]
    return st.one_of(*options)
