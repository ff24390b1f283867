"""The in-gateway pipeline once per merged batch (``InGateway.answer``): requests of one
version and equal parameters share one pass of Preprocess, Model and Postprocess, and
each gets exactly the answer it would get alone, for every default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.placements import InGateway, mergeable
from serving import dataplane
from serving.config import default_models
from serving.errors import InvalidInput
from serving.protocol.task_route import request_params, task_request

GOLDEN = Path(__file__).parents[1] / "testdata"


def _placement(store: Any, model: str) -> tuple[InGateway, str]:
    settings = next(m for m in default_models() if m.name == model)
    placement = InGateway(settings, store, 10.0)
    version = store.versions(model)[-1]
    placement.preload([version])
    return placement, version


def _golden(placement: InGateway, model: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The golden task request's rows as the gateway decodes them, and its parameters."""
    task = placement.processing.task
    body = task_request(task, 64).model_validate(
        json.loads((GOLDEN / f"{model}_task_request.json").read_text()))
    return dataplane.decode_records(body.records, task), request_params(task, body)


def _assert_same(got: dict[str, np.ndarray], alone: dict[str, np.ndarray]) -> None:
    assert got.keys() == alone.keys()
    for name, values in alone.items():
        assert got[name].shape == values.shape, name
        if values.dtype.kind == "f":  # one signature call over more rows: float rounding
            np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.mark.parametrize("model", [m.name for m in default_models()])
def test_a_merged_batch_answers_each_request_as_it_would_alone(tiny_store, model):
    """Three requests over the golden rows (first row, the rest, all reversed) in one
    pass: each answer has its own rows, in its own order, and equals its answer alone."""
    placement, version = _placement(tiny_store, model)
    raw, params = _golden(placement, model)
    calls = [(version, raw[:1], params), (version, raw[1:], params),
             (version, raw[::-1], params)]
    assert mergeable(calls) == [[0, 1, 2]]
    merged = placement.answer(calls)
    for call, outputs in zip(calls, merged, strict=True):
        assert not isinstance(outputs, Exception), outputs
        assert all(len(values) == len(call[1]) for values in outputs.values())
        _assert_same(outputs, placement.answer([call])[0])


def test_requests_with_other_parameters_or_versions_go_through_passes_of_their_own(
        tiny_store):
    """recommend asked for 2 and for 3 products in one batch: two passes, each answer as
    wide as its own ``k``; a version of its own is a group of its own too."""
    placement, version = _placement(tiny_store, "recommend")
    raw, params = _golden(placement, "recommend")
    calls = [(version, raw, {**params, "k": 2}), (version, raw, {**params, "k": 3}),
             (version, raw[:1], {**params, "k": 2})]
    assert mergeable(calls) == [[0, 2], [1]]
    assert mergeable([("1", raw, params), ("2", raw, params)]) == [[0], [1]]
    two, three, first = placement.answer(calls)
    assert two["products"].shape == (len(raw), 2) and three["products"].shape == (len(raw), 3)
    _assert_same(first, {name: values[:1] for name, values in two.items()})


def test_a_request_that_fails_in_a_merged_batch_fails_alone(tiny_store, monkeypatch):
    """A pass that fails is run again request by request: the neighbours of the request
    that fails get their answers; that request gets its own error."""
    placement, version = _placement(tiny_store, "fraud")
    raw, params = _golden(placement, "fraud")
    poisoned = raw[:1] + 1.0  # a row no other request carries
    preprocess = placement.processing.preprocess

    def refusing(version: str, rows: np.ndarray) -> Any:
        if any((row == poisoned[0]).all() for row in rows):
            raise InvalidInput("this row is refused")
        return preprocess(version, rows)

    monkeypatch.setattr(placement.processing, "preprocess", refusing)
    calls = [(version, raw, params), (version, poisoned, params), (version, raw[1:], params)]
    first, refused, last = placement.answer(calls)
    assert isinstance(refused, InvalidInput) and "refused" in refused.message
    _assert_same(first, placement.answer([calls[0]])[0])
    _assert_same(last, placement.answer([calls[2]])[0])
