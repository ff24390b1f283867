"""The `helm test` pod's checks, run with the FinServe image's Python (standard library only).

The plan comes from the chart as JSON in FINSERVE_TEST_PLAN:
  base        Serve URL (<release>-serve-svc:8000)
  keyFile     file holding the plaintext test key, or "" when there is none
  refused     a model an inference without a key must be refused on (401)
  infer       [{model, body}]: V2 inferences sent with the key (200 expected)
  outOfScope  a model the generated key may not call (403 expected), or ""
Transient answers (no connection yet, 429, 502-504) are retried until `patienceS` passes.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

PLAN = json.loads(os.environ["FINSERVE_TEST_PLAN"])
TRANSIENT = {429, 502, 503, 504}


def call(method, path, expect, key=None, body=None):
    """Send until the status is `expect` (or not transient); exit 1 with the answer if not."""
    deadline = time.monotonic() + PLAN["patienceS"]
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    while True:
        request = urllib.request.Request(PLAN["base"] + path, method=method, headers=headers,
                                         data=body.encode() if body else None)
        wait = 5.0
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, text = answer.status, answer.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode(errors="replace")
            wait = float(error.headers.get("retry-after") or wait)
        except OSError as error:  # refused, DNS, timeout: the Serve service is not up yet
            status, text = None, repr(error)
        if status == expect:
            print(f"{method} {path}: {status} {text[:300]}", flush=True)
            return
        if (status is None or status in TRANSIENT) and time.monotonic() + wait < deadline:
            time.sleep(wait)
            continue
        sys.exit(f"FAIL {method} {path}: expected {expect}, got {status} {text[:500]}")


call("GET", "/v2/health/ready", 200)
print("an inference without a key is refused:")
call("POST", f"/v2/models/{PLAN['refused']}/infer", 401, body="{}")
if PLAN["keyFile"]:
    with open(PLAN["keyFile"]) as f:
        key = f.read().strip()
    for check in PLAN["infer"]:
        call("POST", f"/v2/models/{check['model']}/infer", 200, key=key, body=check["body"])
    if PLAN["outOfScope"]:
        print("the test key may call only the models it tests:")
        call("GET", f"/v2/models/{PLAN['outOfScope']}/ready", 403, key=key)
print("helm test: passed")
