"""The published contract tells the truth: every status a route returns is in
``/openapi.json`` for that route, with the error body the server sends; requests built
from the spec's constraints are accepted; V2 metadata names each input column's domain;
an unknown model is a 404 before the body is read. The gateway runs outside Serve."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import ErrorBody
from serving.protocol.examples import protocol_bodies
from serving.security import new_key, write_keys
from serving.tasks import get_task

MAX_INSTANCES = 4
MAX_BODY = 4096


class Client:
    """Requests to the gateway's app, all on one event loop (the batch queues' own)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def send(self, requests: list[dict[str, Any]]) -> list[httpx.Response]:
        """Send each request (``httpx.AsyncClient.request`` keywords) in turn."""
        async def go() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                return [await client.request(**r) for r in requests]
        return self.loop.run_until_complete(go())


@pytest.fixture
def keyed(make_gateway, tmp_path):
    """A gateway that requires keys (small limits), its app, and keys for fraud, for
    forecast only, and for fraud at one request per long while."""
    keys = {name: new_key(name, models, rate) for name, models, rate in (
        ("all", ["fraud", "forecast"], None), ("forecast-only", ["forecast"], None),
        ("slow", ["fraud"], 0.001))}
    write_keys(tmp_path / "keys.yaml", [entry for _, entry in keys.values()])
    gw = make_gateway(security={"require_auth": True, "api_keys_file": str(tmp_path / "keys.yaml")},
                      limits={"max_instances": MAX_INSTANCES, "max_body_bytes": MAX_BODY})
    gw.reconfigure({})
    bearer = {name: {"Authorization": f"Bearer {secret}"} for name, (secret, _) in keys.items()}
    client = Client(gw.__serve_build_asgi_app__())
    yield client, bearer
    client.loop.close()


@pytest.fixture
def open_app(make_gateway):
    gw = make_gateway()
    gw.reconfigure({})
    client = Client(gw.__serve_build_asgi_app__())
    yield client
    client.loop.close()


def _spec(app: Client) -> dict[str, Any]:
    return app.send([{"method": "GET", "url": "/openapi.json"}])[0].json()


def _body(path: str) -> dict[str, Any]:
    """A valid body of fraud's route ``path``, in its protocol."""
    bodies = protocol_bodies("fraud")
    return bodies["v2"] if path.endswith("/infer") else (
        bodies["v1"] if path.endswith(":predict") else bodies["task"])


def _bad_requests(template: str, method: str, bearer: dict[str, dict[str, str]]
                  ) -> list[dict[str, Any]]:
    """Requests to one route of the spec that the server should refuse (or answer)."""
    good = bearer["all"]
    path = template.replace("{model}", "fraud").replace("{version}", "1")
    unknown = template.replace("{model}", "nope").replace("{version}", "1")
    asks = [{"url": path}, {"url": path, "headers": bearer["forecast-only"]},
            {"url": path, "headers": {"Authorization": "Bearer nonsense"}},
            {"url": path, "headers": {**good, "x-request-id": "bad id!"}},
            {"url": unknown, "headers": good},
            {"url": path, "headers": {**good, "content-length": str(MAX_BODY + 1)},
             "content": b"x" * (MAX_BODY + 1)}]
    if "{version}" in template:
        for version in ("9", "x"):
            asks.append({"url": template.replace("{model}", "fraud").replace(
                "{version}", version), "headers": good})
    if method == "post":
        asks += _bad_bodies(path, good)
    asks += [{"url": path, "headers": bearer["slow"]}] * 2
    return [{"method": method.upper(), **a} for a in asks]


def _bad_bodies(path: str, good: dict[str, str]) -> list[dict[str, Any]]:
    """Malformed, empty, oversized (instances), out-of-range and misshapen bodies."""
    body = _body(path)
    text = json.dumps(body)
    out_of_range = re.sub(r"950(\.0)?", "1e30", text, count=1)
    many = (json.dumps({**body, "records": body["records"] * MAX_INSTANCES})
            if "records" in body else text.replace('"shape": [2', f'"shape": [{2 * MAX_INSTANCES}'))
    if "instances" in body:
        many = json.dumps({**body, "instances": body["instances"] * MAX_INSTANCES})
    raw = [b"{not json", b"", b"{}", b"[]", text.encode(), out_of_range.encode(),
           many.encode(), json.dumps({**body, "extra": 1}).encode(), b"[" * 300]
    return [{"url": path, "headers": {**good, "content-type": "application/json"}, "content": r}
            for r in raw]


def test_every_status_a_route_returns_is_documented_with_the_error_body(keyed):
    app, bearer = keyed
    spec = _spec(app)
    seen: set[int] = set()
    for template, methods in spec["paths"].items():
        for method, operation in methods.items():
            documented = {int(s) for s in operation["responses"]}
            for response in app.send(_bad_requests(template, method, bearer)):
                assert response.status_code in documented, (
                    f"{method} {template}: {response.status_code} {response.text} "
                    f"not in {sorted(documented)}")
                if response.status_code >= 400 and response.status_code != 503:
                    ErrorBody.model_validate(response.json())
                seen.add(response.status_code)
    assert {200, 400, 401, 403, 404, 413, 422, 429} <= seen


def test_every_error_status_carries_the_error_body_schema(open_app):
    spec = _spec(open_app)
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
    for status in ("400", "404", "413", "422", "503", "504"):
        ref = infer[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _values(spec: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON schema of the spec allows (the kinds a task's Record uses)."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        return st.one_of([_values(spec, s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props, required = schema["properties"], schema.get("required", [])
        return st.fixed_dictionaries({k: _values(spec, props[k]) for k in required},
                                     optional={k: _values(spec, v) for k, v in props.items()
                                               if k not in required})
    if kind == "array":
        return st.lists(_values(spec, schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", 3))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if kind == "integer":
        return st.integers(*(None if b is None else int(b) for b in (low, high)))
    if kind == "number":
        return st.floats(low, high, exclude_min="exclusiveMinimum" in schema,
                         exclude_max="exclusiveMaximum" in schema, width=32)
    return {"boolean": st.booleans(), "null": st.none()}[kind]


def test_requests_the_spec_calls_valid_are_accepted(open_app):
    model, route = "fraud", "score"
    spec = _spec(open_app)
    operation = spec["paths"][f"/v1/{model}/{route}"]["post"]
    schema = _resolve(spec, operation["requestBody"]["content"]["application/json"]["schema"])
    assert schema["properties"]["records"]["maxItems"] == 1024  # the instance limit

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_values(spec, schema))
    def accepted(body: dict[str, Any]) -> None:
        response = open_app.send([{"method": "POST", "url": f"/v1/{model}/{route}",
                                     "json": body}])[0]
        assert response.status_code == 200, (body, response.text)

    accepted()


def test_task_request_schema_carries_the_record_constraints(open_app):
    spec = _spec(open_app)
    record = spec["components"]["schemas"]["Transaction"]
    assert record["properties"]["hour"] == {**record["properties"]["hour"],
                                            "minimum": 0, "maximum": 23, "type": "integer"}
    assert record["additionalProperties"] is False
    params = spec["components"]["schemas"]["ForecastParameters"]["properties"]["horizon"]
    assert (params["minimum"], params["maximum"]) == (1, 10)


def test_v2_metadata_names_each_input_column_and_a_request_from_it_is_accepted(open_app):
    meta = open_app.send([{"method": "GET", "url": "/v2/models/fraud"}])[0].json()
    (tensor,) = meta["inputs"]
    columns = tensor["parameters"]["columns"]
    assert [c["name"] for c in columns] == list(get_task("fraud").raw_fields)
    hour = columns[[c["name"] for c in columns].index("hour")]
    assert hour == {"name": "hour", "kind": "integer", "minimum": 0, "maximum": 23,
                    "whole": True}
    edges = [[c["minimum"] for c in columns], [c["maximum"] for c in columns]]
    above = [list(edges[1])]
    above[0][columns.index(hour)] = 24
    ok, bad = open_app.send([
        {"method": "POST", "url": "/v2/models/fraud/infer", "json": {"inputs": [{
            "name": tensor["name"], "datatype": tensor["datatype"], "shape": [2, len(columns)],
            "data": edges}]}},
        {"method": "POST", "url": "/v2/models/fraud/infer", "json": {"inputs": [{
            "name": tensor["name"], "datatype": tensor["datatype"], "shape": [1, len(columns)],
            "data": above}]}}])
    assert ok.status_code == 200, ok.text
    assert bad.status_code == 422 and "hour" in bad.json()["error"]


def test_v2_metadata_of_a_list_input_bounds_every_element(open_app):
    meta = open_app.send([{"method": "GET", "url": "/v2/models/forecast"}])[0].json()
    assert meta["inputs"][0]["parameters"] == {"elements": {
        "name": "prices", "kind": "number", "exclusiveMinimum": 0, "maximum": 1e9}}


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", "/v1/models/nope:predict",
                                  "/v1/nope/score", "/v2/models/fraud/versions/9/infer",
                                  "/v1/models/fraud/versions/9:predict",
                                  "/v1/fraud/score?version=9", "/v2/models/fraud/infer?version=9",
                                  "/v1/models/fraud:predict?version=9"])
@pytest.mark.parametrize("content", [b"{not json", b"{}", b'{"inputs": 3}'])
def test_an_unknown_model_or_version_is_a_404_before_the_body_is_read(open_app, path, content):
    (response,) = open_app.send([{"method": "POST", "url": path, "content": content,
                                    "headers": {"content-type": "application/json"}}])
    assert response.status_code == 404, response.text
    assert "nope" in response.json()["error"] or "'9'" in response.json()["error"]
