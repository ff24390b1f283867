"""Sustained concurrent load on every model and protocol: every request answered 200."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import ALL_MODELS
from tests.reliability.load import Load, valid_calls

pytestmark = pytest.mark.reliability


def test_concurrent_clients_on_all_models_get_only_200s(base_url, ledger, seconds):
    with Load(base_url, valid_calls(), ledger, clients=16) as load:
        time.sleep(seconds)
    tally = load.stop()
    print("\n" + tally.summary(f"load, 16 clients, {len(ALL_MODELS)} models x task/V2/V1"))
    assert tally.sent > 0
    assert tally.failed == 0, tally.summary("load")
