"""What a decision record holds and how it is encoded, in every format ever written.

Formats (``format`` field; absent means 1), all read by ``verify`` and ``replay``:

1. the standard library's JSON with sorted keys; ``outputs`` one dict per example.
2. as 1, encoded with orjson (the same text except for number formatting).
3. as 2, with ``outputs`` as columns (``{"name": [one value per example]}``).
4. as 3, compact and authenticated: no ``input_sha256`` (the inputs are in the record and
   its hash covers them), outputs a task derives from others left out (reason statements
   follow from reason codes), a ``kind`` (``decision`` or ``shadow``), and ``mac``: an
   HMAC of the record's hash under the trail key, which the replicas hold and readers of
   the trail do not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import orjson

from serving.store import utc_now

GENESIS = "0" * 64
#: the record format written now
RECORD_FORMAT = 4


def canonical_v1(value: Any) -> bytes:
    """Format 1 (records without ``format``) and tokens: the standard library's JSON with
    sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(value: Any) -> bytes:
    """Formats 2 and later: orjson with sorted keys (compact, UTF-8); six times faster than
    format 1's encoder on a 64-row record (docs/benchmarks.md)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


CANONICAL = {1: canonical_v1, 2: canonical, 3: canonical, 4: canonical}


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def recorded(values: np.ndarray) -> list[Any]:
    """An array as a record holds it, as nested lists of its shape: float32 values in their
    shortest form (``0.3``, which reads back as the same float32, not
    ``0.30000001192092896``); strings as they are, with the '' that pads ragged rows."""
    if values.dtype == np.float32:
        return orjson.loads(orjson.dumps(np.ascontiguousarray(values),
                                         option=orjson.OPT_SERIALIZE_NUMPY))
    return values.tolist()


def recorded_outputs(outputs: dict[str, np.ndarray],
                     derived: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """A record's ``outputs``: each output tensor by name, as ``recorded``, except those
    ``derived`` from the others (written once, as their source)."""
    return {name: recorded(values) for name, values in outputs.items() if name not in derived}


def decision_record(
    *, request_id: str, key_id: str | None, model: str, version: str, artifact_sha256: str,
    route: str, inputs: Any, outputs: dict[str, list[Any]], latency_ms: float,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one decision, before it is chained."""
    return {
        "kind": "decision", "request_id": request_id, "time": utc_now(), "key_id": key_id,
        "model": model, "version": version, "artifact_sha256": artifact_sha256,
        "route": route, "inputs": inputs, "parameters": parameters or {}, "outputs": outputs,
        "latency_ms": round(latency_ms, 3),
    }


def body_of(record: dict[str, Any]) -> dict[str, Any]:
    """What a record's ``hash`` covers: everything but ``hash`` and ``mac``."""
    return {k: v for k, v in record.items() if k not in ("hash", "mac")}


def record_hash(record: dict[str, Any]) -> str | None:
    """The hash a record should carry, in its own format; None for a value its format
    cannot hold or an unknown format (either way: not the record that was written)."""
    fmt = record.get("format", 1)
    encode = CANONICAL.get(fmt) if type(fmt) is int else None
    if encode is None:
        return None
    try:
        return hashlib.sha256(encode(body_of(record))).hexdigest()
    except (TypeError, ValueError):
        return None


def decision_id(record: dict[str, Any]) -> str:
    """The id FinServe gives every decision: its chain and sequence number, unique even
    when a client reuses a request id."""
    return f"{record.get('chain')}:{record.get('seq')}"
