"""API keys, rate limits and the decision trail on the real local Ray Serve."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from serving import audit
from serving.audit.keys import TOKEN_PREFIX
from serving.cli import app as cli
from tests.conftest import golden
from tests.integration.conftest import app_args, wait_for

pytestmark = pytest.mark.integration


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_when_sent_are_checked_scoped_and_rate_limited(client, api_keys):
    body = golden("sentiment_task_request.json")
    ok = client.post("/v1/sentiment/analyze", json=body, headers=_bearer(api_keys["ops"]))
    assert ok.status_code == 200
    wrong = client.post("/v1/sentiment/analyze", json=body, headers=_bearer("fsk_ops_nope"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    scoped = client.post("/v1/sentiment/analyze", json=body,
                         headers=_bearer(api_keys["fraud-desk"]))
    assert scoped.status_code == 403 and "may not call model 'sentiment'" in scoped.json()["error"]
    statuses = [client.post("/v1/sentiment/analyze", json=body,
                            headers=_bearer(api_keys["slow"])) for _ in range(4)]
    limited = [r for r in statuses if r.status_code == 429]
    assert statuses[0].status_code == 200 and limited
    assert int(limited[0].headers["retry-after"]) >= 1


def test_403_and_429_come_before_the_body_is_read_and_unknown_models_still_get_404(
        client, api_keys):
    """The key's scope and rate are checked on the path alone: a body that is not JSON, or
    one just under the 64 kB limit, gets the 403 or 429, never the 400 it would earn."""
    large = b'{"records": [' + b"x" * 60_000  # not JSON either, under max_body_bytes
    for body in (b"{not json", large):
        for path in ("/v1/sentiment/analyze", "/v2/models/sentiment/infer",
                     "/v1/models/sentiment:predict", "/v1/models/sentiment/versions/1:predict"):
            r = client.post(path, content=body, headers=_bearer(api_keys["fraud-desk"]))
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "may not call model 'sentiment'" in r.json()["error"]
    # the slow key (1 request/s): whatever passes its rate is refused for the body, the
    # rest for the rate, before their bodies are read
    statuses = [client.post("/v2/models/fraud/infer", content=body,
                            headers=_bearer(api_keys["slow"])).status_code
                for body in (b"{not json", large, b"{not json", large)]
    assert set(statuses) <= {400, 429} and statuses.count(429) >= 3, statuses
    ops = _bearer(api_keys["ops"])
    assert client.post("/v2/models/fraud/infer", content=b"{not json",
                       headers=ops).status_code == 400  # an admitted key: the body's answer
    for path, body in (("/v2/models/nope/infer", golden("fraud_v2_request.json")),
                       ("/v1/models/nope:predict", golden("fraud_v1_request.json")),
                       ("/v1/nope/score", golden("fraud_task_request.json"))):
        r = client.post(path, json=body, headers=ops)
        assert r.status_code == 404, (path, r.text)


@pytest.fixture(scope="module")
def strict_url(ray_serve, serve_apps, base_url, tiny_store, api_keys, tmp_path_factory):
    """An app that requires keys and whose decision trail cannot be written."""
    args = app_args(tiny_store.root, "/proc/finserve-trail-cannot-exist",
                    keys_file=api_keys["file"], keys_dir=str(tmp_path_factory.mktemp("keys")))
    args["security"]["require_auth"] = True
    args["models"] = [{"name": "sentiment"}]
    serve_apps.put("strict", args, route_prefix="/strict")
    yield f"http://127.0.0.1:{ray_serve}/strict"
    serve_apps.delete("strict")


def test_a_server_that_requires_keys_refuses_calls_without_one(strict_url, api_keys):
    for body in ({}, {"records": [{"text": "x"}]}, "not json"):
        r = httpx.post(f"{strict_url}/v1/sentiment/analyze", content=json.dumps(body))
        assert r.status_code == 401, r.text  # before the body is even read
    assert httpx.get(f"{strict_url}/v2/health/live").status_code == 200  # probes stay open
    r = httpx.get(f"{strict_url}/v2/models/sentiment")
    assert r.status_code == 401


def test_no_answer_goes_out_unrecorded(strict_url, api_keys):
    r = httpx.post(f"{strict_url}/v1/sentiment/analyze",
                   json=golden("sentiment_task_request.json"), headers=_bearer(api_keys["ops"]),
                   timeout=30)
    assert r.status_code == 503 and "decision trail unavailable" in r.json()["error"]
    assert r.headers["retry-after"] == "1"


def _records(trail, request_ids):
    return [r for r in audit.read_records(str(trail)) if r.get("request_id") in request_ids]


def test_every_answer_leaves_one_record_and_errors_none(client, trail, api_keys):
    sent: dict[str, int] = {}
    bodies = [golden("fraud_v2_request.json"), {"inputs": []}, golden("credit_task_request.json")]
    routes = ["/v2/models/fraud/infer", "/v2/models/fraud/infer", "/v1/credit/decide"]
    for i in range(12):
        rid = f"trail-{uuid.uuid4().hex[:8]}-{i}"
        r = client.post(routes[i % 3], json=bodies[i % 3],
                        headers={"x-request-id": rid, **_bearer(api_keys["ops"])})
        sent[rid] = r.status_code
    answered = {rid for rid, status in sent.items() if status == 200}
    assert len(answered) == 8 and set(sent.values()) == {200, 422}
    records = _records(trail, set(sent))
    assert {r["request_id"] for r in records} == answered and len(records) == len(answered)
    credit = next(r for r in records if r["model"] == "credit")
    assert credit["key_id"] == "ops" and credit["version"] == "1"
    assert credit["format"] == audit.RECORD_FORMAT
    # the outputs as columns, one value per example; reason codes are part of the record
    assert {len(column) for column in credit["outputs"].values()} == {2}
    assert any(credit["outputs"]["reason_codes"][1])
    assert len(credit["artifact_sha256"]) == 64 and len(credit["mac"]) == 32
    assert "reasons" not in credit["outputs"]  # they follow from the codes: recorded once
    _verified(trail)


def _verified(trail) -> str:
    """`finserve audit verify` with only the public key, as an auditor runs it."""
    result = CliRunner().invoke(cli, ["audit", "verify", "--trail", str(trail),
                                      "--public-key", f"{trail}-keys/trail.pub"])
    assert result.exit_code == 0 and "intact" in result.output, result.output
    return result.output


def test_a_refused_request_writes_no_record(client, trail):
    """4xx after the model ran (an output the model does not have) is refused before it."""
    rid = f"refused-{uuid.uuid4().hex[:8]}"
    body = {**golden("fraud_v2_request.json"), "outputs": [{"name": "no_such_output"}]}
    r = client.post("/v2/models/fraud/infer", json=body, headers={"x-request-id": rid})
    assert r.status_code == 422 and "no_such_output" in r.json()["error"]
    assert not _records(trail, {rid})


def test_a_reused_request_id_keeps_each_decision_apart(client, trail, tiny_store):
    rid = f"reused-{uuid.uuid4().hex[:8]}"
    body = golden("fraud_v2_request.json")
    answers = [client.post("/v2/models/fraud/infer", json=body, headers={"x-request-id": rid})
               for _ in range(2)]
    ids = [a.headers["x-decision-id"] for a in answers]
    assert all(a.status_code == 200 for a in answers) and len(set(ids)) == 2
    runner = CliRunner()
    ambiguous = runner.invoke(cli, ["audit", "replay", rid, "--trail", str(trail),
                                    "--store", tiny_store.root])
    assert ambiguous.exit_code == 2 and ids[0] in ambiguous.output, ambiguous.output
    exact = runner.invoke(cli, ["audit", "replay", ids[1], "--trail", str(trail),
                                "--store", tiny_store.root])
    assert exact.exit_code == 0 and '"matches": true' in exact.output, exact.output


@pytest.mark.parametrize("rid", ["x" * 129, "bad id", "a\tb", "é"])
def test_a_request_id_of_unbounded_length_or_odd_characters_is_refused(client, trail, rid):
    r = client.post("/v2/models/fraud/infer", json=golden("fraud_v2_request.json"),
                    headers={"x-request-id": rid.encode()})
    assert r.status_code == 400 and "x-request-id" in r.json()["error"]


def test_a_recorded_decision_replays_on_the_version_it_names(client, trail, tiny_store):
    rid = f"replay-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/models/fraud/versions/1:predict", json=golden("fraud_v1_request.json"),
                    headers={"x-request-id": rid})
    assert r.status_code == 200
    result = CliRunner().invoke(cli, ["audit", "replay", rid, "--trail", str(trail),
                                      "--store", tiny_store.root])
    assert result.exit_code == 0, result.output
    assert '"matches": true' in result.output and '"version": "1"' in result.output


def test_personal_fields_never_reach_the_trail_in_clear(client, trail):
    rid = f"pii-{uuid.uuid4().hex[:8]}"
    body = {"records": [{"customer_id": "C000001"}, {"customer_id": "jane.doe@example.com"}]}
    assert client.post("/v1/recommend/recommend", json=body,
                       headers={"x-request-id": rid}).status_code == 200
    record = wait_for(lambda: _records(trail, {rid}))[0]
    text = json.dumps(record)
    assert "C000001" not in text and "jane.doe" not in text
    assert record["inputs"]["tokenized"] == ["customer_id"]
    assert all(v.startswith(TOKEN_PREFIX) for v in record["inputs"]["data"])
