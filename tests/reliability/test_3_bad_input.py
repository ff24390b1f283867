"""A barrage of hostile bodies on every POST route of the running app's OpenAPI schema: no
5xx, every error a JSON ``{"error": ...}``, and the server still answers afterwards."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import ALL_MODELS
from tests.reliability.hostile import CONTENT_TYPES, FIXED, bodies, encode, unicode, variants
from tests.reliability.load import REQUEST_ID, Ledger, Tally, gateway_failures, task_path
from tests.reliability.load import bodies as valid_bodies

pytestmark = pytest.mark.reliability

VERSIONS = ["1", "2", "3", "99", "0", "01", "-1", "latest", "1.0"]
segments = st.text(min_size=1, max_size=30) | unicode


@dataclass(eq=False)
class Route:
    """One POST route of the OpenAPI schema."""

    template: str
    schema: dict[str, Any]
    path_params: list[str]
    query_params: list[str]

    @property
    def kind(self) -> str:
        if self.template.endswith("/infer"):
            return "v2"
        return "v1" if self.template.endswith(":predict") else "task"

    @property
    def model(self) -> str | None:
        """The model of a task route (fixed by its path)."""
        return next((m for m in ALL_MODELS if task_path(m) == self.template), None)


def post_routes(spec: dict[str, Any]) -> list[Route]:
    routes = []
    for template, operations in spec["paths"].items():
        if op := operations.get("post"):
            params = op.get("parameters", [])
            routes.append(Route(
                template, op["requestBody"]["content"]["application/json"]["schema"],
                [p["name"] for p in params if p["in"] == "path"],
                [p["name"] for p in params if p["in"] == "query"],
            ))
    return routes


@cache
def valid(kind: str, model: str) -> dict[str, Any]:
    return valid_bodies(model if model in ALL_MODELS else "fraud")[kind]


def segment(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def not_allowed(literal: str) -> None:
    raise ValueError(f"{literal} in a JSON answer")


class Barrage:
    """Sends hostile requests and checks each answer: no 5xx, errors as JSON ``{"error"}``,
    successes as strict JSON."""

    def __init__(self, client: httpx.Client, ledger: Ledger) -> None:
        self.client, self.ledger, self.tally = client, ledger, Tally()
        #: (route, status, problem, request id, request) of every bad answer
        self.problems: list[tuple[str, int, str, str, str]] = []

    def send(self, route: str, url: str, body: bytes,
             content_type: str = "application/json") -> None:
        rid = self.ledger.new_id()
        started = time.perf_counter()
        r = self.client.post(url, content=body,
                             headers={"content-type": content_type, REQUEST_ID: rid})
        self.ledger.note(rid, r.status_code)
        self.tally.add(r.status_code, time.perf_counter() - started, url, rid)
        if problem := self.check(r):
            request = f"POST {url} ({content_type}) {body[:200]!r}"
            self.problems.append((route, r.status_code, problem.replace(rid, "<id>"), rid,
                                  request))

    @staticmethod
    def check(r: httpx.Response) -> str | None:
        if r.status_code >= 500:
            return r.text
        try:
            answer = json.loads(r.text, parse_constant=not_allowed)
        except ValueError as exc:
            return f"not strict JSON: {exc}"
        if r.status_code >= 400 and not (
            isinstance(answer, dict) and isinstance(answer.get("error"), str)
        ):
            return f"no 'error' in {r.text[:100]}"
        return None

    def kinds(self) -> dict[str, list[str]]:
        """Bad answers by route, status and cause (the gateway's exception for a 500), with
        up to three sample requests each."""
        failures = gateway_failures()
        kinds: dict[str, list[str]] = {}
        for route, status, problem, rid, request in self.problems:
            cause = failures.get(rid) or problem[:90]
            samples = kinds.setdefault(f"{route} -> {status} {cause}", [])
            if len(samples) < 3:
                samples.append(request)
        return kinds


@st.composite
def hostile_requests(draw: st.DrawFn, routes: list[Route], spec: dict[str, Any]
                     ) -> tuple[str, str, bytes, str]:
    """(route, url, body, content type): any POST route, mostly served models, hostile path
    and query values, and a hostile body."""
    route = draw(st.sampled_from(routes))
    model = route.model or draw(st.sampled_from([*ALL_MODELS, ""])) or draw(segments)
    values = {"model": model}
    for name in route.path_params:
        values.setdefault(name, draw(st.sampled_from(VERSIONS) | segments))
    url = route.template.format(**{k: segment(v) for k, v in values.items()})
    query = [f"{q}={segment(draw(st.sampled_from(VERSIONS) | segments))}"
             for q in route.query_params if draw(st.booleans())]
    if query:
        url += "?" + "&".join(query)
    body = draw(bodies(route.schema, spec, valid(route.kind, model)))
    return route.template, url, body, draw(st.sampled_from(CONTENT_TYPES))


def fixed_barrage(barrage: Barrage, routes: list[Route]) -> None:
    """Every route gets the fixed hostile bodies, a valid body under every content type, and
    each served model's body with poisoned values."""
    for route in routes:
        url = route.template.format(model=route.model or "fraud", version="1")
        for body in FIXED:
            barrage.send(route.template, url, body)
        for content_type in CONTENT_TYPES:
            body = encode(valid(route.kind, route.model or "fraud"))
            barrage.send(route.template, url, body, content_type)
        for model in [route.model] if route.model else ALL_MODELS:
            url = route.template.format(model=model, version="1")
            for body in variants(valid(route.kind, model)):
                barrage.send(route.template, url, encode(body))


def test_hostile_bodies_on_every_post_route_get_json_4xx(client, ledger, seconds):
    spec = client.get("/openapi.json").json()
    routes = post_routes(spec)
    assert {r.kind for r in routes} == {"v2", "v1", "task"}, [r.template for r in routes]
    barrage = Barrage(client, ledger)
    started = time.monotonic()
    fixed_barrage(barrage, routes)
    deadline = time.monotonic() + seconds  # then hypothesis, for as long as a load test runs

    @settings(max_examples=max(50, int(seconds * 20)), deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(hostile_requests(routes, spec))
    def hostile_request(request: tuple[str, str, bytes, str]) -> None:
        if time.monotonic() < deadline:
            barrage.send(*request)

    hostile_request()
    elapsed, tally, kinds = time.monotonic() - started, barrage.tally, barrage.kinds()
    statuses = ",".join(f"{s}:{n}" for s, n in sorted(tally.statuses.items()))
    print(f"\n[reliability] hostile input, {len(routes)} POST routes: sent={tally.sent} "
          f"failed={len(barrage.problems)} 5xx={tally.server_errors} statuses={statuses} "
          f"rps={tally.sent / max(elapsed, 1e-9):.1f} kinds_of_failure={len(kinds)}")
    still = {}
    for model in ALL_MODELS:  # the server still answers good requests
        r = client.post(task_path(model), json=valid("task", model),
                        headers={REQUEST_ID: (rid := ledger.new_id())})
        ledger.note(rid, still.setdefault(model, r.status_code))
    report = "\n".join(f"{kind}\n" + "\n".join(f"    e.g. {r}" for r in requests)
                       for kind, requests in kinds.items())
    if barrage.problems:
        pytest.fail(f"{len(barrage.problems)} bad answers:\n{report}", pytrace=False)
    assert set(still.values()) == {200}, still
