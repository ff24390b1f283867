"""helm's release history: which revision runs and which one ``undo`` goes back to.

helm v4 (pkg/action/rollback.go) records a rollback as a new revision with the target's
chart, values and manifest, described "Rollback to N", and marks the release it replaced
superseded; a failed upgrade, install or rollback is recorded with status failed
(descriptions 'Upgrade "x" failed: ...', 'Release "x" failed: ...', 'Rollback "x" failed:
...'), and a failed rollback leaves no revision deployed. Only deployed and superseded
revisions ever ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_ROLLBACK_TO = re.compile(r"^Rollback to (\d+)$")
RAN_STATUSES = frozenset({"deployed", "superseded"})


def _rows(history: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(h["revision"]): h for h in history}


def current_revision(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The revision whose content runs: helm's deployed one; with none (after a failed
    rollback), the newest superseded one."""
    rows = _rows(history)
    for status in ("deployed", "superseded"):
        found = [r for r, h in rows.items() if h.get("status") == status]
        if found:
            return max(found)
    return None


def content_origin(history: Sequence[Mapping[str, Any]], revision: int) -> int:
    """The revision that first deployed ``revision``'s content: a "Rollback to N" revision
    runs N's content (followed through chains of rollbacks, even to a pruned N)."""
    rows = _rows(history)
    while (row := rows.get(revision)) is not None and (
            match := _ROLLBACK_TO.match(str(row.get("description") or ""))):
        revision = int(match.group(1))
    return revision


def undo_target(history: Sequence[Mapping[str, Any]]) -> tuple[int | None, str]:
    """The revision ``undo`` goes back to, and why: the newest revision that ran before the
    content running now was first deployed, with other content (so an automatic rollback's
    "Rollback to N" and the failed release before it are both stepped over)."""
    current = current_revision(history)
    if current is None:
        return None, "no revision of the release is deployed"
    origin = content_origin(history, current)
    older = [r for r, h in _rows(history).items() if r < origin and h.get("status") in
             RAN_STATUSES and content_origin(history, r) != origin]
    runs = f"revision {current}" + (f" (the content of revision {origin})"
                                    if origin != current else "")
    if not older:
        kept = min(_rows(history), default=current)
        return None, (f"{runs} runs now and no earlier revision that ran is in helm's history "
                      f"(it keeps revisions from {kept}; helm upgrade --history-max)")
    target = max(older)
    return target, f"{runs} runs now; revision {target} ran before it"
