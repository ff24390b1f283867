"""Reason-code ranking: the vectorised ranking equals its per-row definition."""

import numpy as np
import pytest

from serving.tasks._explain import rank_reasons

COLUMNS = ["income", "debt", "home", "home", "home", "age"]  # a one-hot group of three
STATEMENTS = {name: (f"R{i}", f"{name} raised the score")
              for i, name in enumerate(dict.fromkeys(COLUMNS))}


def _by_definition(attributions, slots, mask, threshold=1e-4):
    """Per row: sum columns per feature, rank by contribution (ties in feature order) and
    keep the first ``slots`` that raised the score by more than ``threshold``."""
    names = list(dict.fromkeys(COLUMNS))
    codes, texts = [], []
    for row, values in enumerate(attributions):
        per = {name: 0.0 for name in names}
        for column, name in enumerate(COLUMNS):
            per[name] += values[column]
        ranked = sorted(names, key=lambda n: -per[n])  # sorted() is stable
        chosen = [n for n in ranked if per[n] > threshold][:slots] if mask[row] else []
        pad = [""] * (slots - len(chosen))
        codes.append([STATEMENTS[n][0] for n in chosen] + pad)
        texts.append([STATEMENTS[n][1] for n in chosen] + pad)
    return codes, texts


@pytest.mark.parametrize("slots", [1, 3, 6])
def test_ranking_matches_the_per_row_definition(slots):
    rng = np.random.default_rng(slots)
    attributions = rng.normal(scale=0.1, size=(200, len(COLUMNS)))
    attributions[::7] = 0.05  # ties between features
    attributions[::11] = -1.0  # nothing raised the score
    attributions[3, :] = [2e-5, 0, 0, 0, 0, 1.0]  # under the threshold but positive
    mask = rng.random(200) > 0.3
    mask[3] = True
    codes, texts = rank_reasons(attributions, 200, COLUMNS, STATEMENTS, slots, mask=mask)
    want_codes, want_texts = _by_definition(attributions, slots, mask)
    assert codes.shape == (200, slots) and codes.tolist() == want_codes
    assert texts.tolist() == want_texts
    assert codes[3].tolist()[:1] == ["R3"] and (slots == 1 or codes[3, 1] == "")


def test_no_attributions_means_no_reasons():
    codes, texts = rank_reasons(None, 2, COLUMNS, STATEMENTS, 3)
    assert codes.tolist() == [["", "", ""]] * 2 and texts.tolist() == [["", "", ""]] * 2
