from collections import Counter

import numpy as np
import pytest

from serving.traffic import agrees, choose_version, compare


def test_weighted_split_is_close_to_its_weights_and_sticky_per_key():
    picks = Counter(choose_version({"2": 90, "3": 10}, f"customer-{i}") for i in range(5000))
    assert picks["3"] / 5000 == pytest.approx(0.10, abs=0.02)
    for i in range(50):
        key = f"customer-{i}"
        assert len({choose_version({"2": 90, "3": 10}, key) for _ in range(5)}) == 1


def test_all_weight_on_one_version_always_picks_it():
    assert {choose_version({"2": 0, "3": 100}, None) for _ in range(100)} == {"3"}


def test_compare_reports_agreement_and_score_distributions():
    records = [
        {"champion": "2", "challenger": "3",
         "champion_outputs": [{"decision": "approve", "p": 0.1}],
         "challenger_outputs": [{"decision": d, "p": p}]}
        for d, p in (("approve", 0.1), ("approve", 0.2), ("review", 0.5), ("approve", 0.1))
    ]
    report = compare(records)
    assert report["requests"] == 4 and report["versions"] == [("2", "3")]
    assert report["outputs"]["decision"]["agreement"] == 0.75
    assert report["outputs"]["p"]["mean_abs_diff"] == pytest.approx(0.125)


def test_compare_finds_the_decision_by_its_declared_role():
    """Digits' decision is a whole number, not a string: its declared role makes it one
    compared by agreement, and the report names it."""
    records = [
        {"task": "digits", "champion": "1", "challenger": "2",
         "champion_outputs": [{"digit": 3, "confidence": 0.9}],
         "challenger_outputs": [{"digit": d, "confidence": 0.8}]}
        for d in (3, 3, 5, 3)
    ]
    report = compare(records)
    assert report["decision"] == "digit"
    assert report["outputs"]["digit"] == {"kind": "label", "examples": 4, "agreement": 0.75}
    assert report["outputs"]["confidence"]["kind"] == "score"


def test_shadow_agreement_compares_only_the_decision_outputs():
    live = {"decision": np.array(["approve", "block"]), "p": np.array([0.1, 0.9])}
    same = {"decision": np.array(["approve", "block"]), "p": np.array([0.2, 0.8])}
    other = {"decision": np.array(["approve", "review"]), "p": np.array([0.1, 0.9])}
    assert agrees(("decision",), live, same)
    assert not agrees(("decision",), live, other)
