"""After the load, the replica loss and the barrage: one intact decision record per answered
prediction, none for a refused one."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from serving.audit import read_records, verify
from tests.reliability.load import Load, valid_calls

pytestmark = pytest.mark.reliability


def test_one_intact_decision_record_per_answered_prediction(base_url, ledger, trail):
    if not ledger.answered():  # run alone: answer something first
        with Load(base_url, valid_calls(), ledger, clients=4) as load:
            while load.tally.sent < 50:
                time.sleep(0.1)
    answered = ledger.answered()
    records = list(read_records(str(trail)))
    ours = Counter(r.get("request_id") for r in records
                   if str(r.get("request_id")).startswith(ledger.prefix))
    report = verify(str(trail))
    written = len(records) - ledger.baseline
    print(f"\n[reliability] decision trail: answered_2xx={len(answered)} "
          f"refused_or_lost={len(ledger.status) - len(answered)} records_written={written} "
          f"records_verified={report.records} chains={report.chains} "
          f"problems={len(report.problems)}")
    assert not [rid for rid, n in ours.items() if n > 1], "request ids recorded twice"
    assert not answered - set(ours), f"{len(answered - set(ours))} answers without a record"
    assert not set(ours) - answered, f"{len(set(ours) - answered)} records of refused requests"
    assert written == len(answered)
    assert report.ok, report.problems[:5]
