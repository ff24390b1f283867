"""One request example per task, in every protocol: the task route's body (a task's request
example, tests/testdata/<task>_task_request.json) and the same batch as V2 and V1 bodies.
The helm test's sample requests and the test tiers' load are made from these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.dataplane import jsonable
from serving.tasks import get_task

#: where each task's request example lives (the task route's body)
EXAMPLES = Path(__file__).resolve().parents[2] / "tests" / "testdata"


def task_example(task: str) -> dict[str, Any]:
    """The task route's request example of ``task``."""
    return json.loads((EXAMPLES / f"{task}_task_request.json").read_text())


def _short(values: Any) -> Any:
    """Float32 values as their shortest decimals (0.18, not 0.18000000715255737)."""
    if isinstance(values, list):
        return [_short(v) for v in values]
    return float(str(np.float32(values))) if isinstance(values, float) else values


def protocol_bodies(task: str, task_body: dict[str, Any] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``task_body`` (default: the task's example) and the same batch as V2 and V1 bodies,
    keyed ``task``, ``v2`` and ``v1``."""
    body = task_example(task) if task_body is None else task_body
    t = get_task(task)
    raw = t.check_raw(t.records_to_raw([t.Record(**r) for r in body["records"]]))
    spec = t.input_spec
    v2: dict[str, Any] = {"inputs": [{"name": spec.name, "shape": list(raw.shape),
                                      "datatype": spec.datatype,
                                      "data": _short(jsonable(raw.reshape(-1)))}]}
    v1: dict[str, Any] = {"instances": _short(jsonable(raw))}
    if "parameters" in body:
        v2["parameters"] = v1["parameters"] = body["parameters"]
    return {"task": body, "v2": v2, "v1": v1}
