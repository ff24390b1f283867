"""The RayService's events: which are new since the rollout began, and how they read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def event_fingerprint(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """What changes when an event is recorded again. KubeRay v1.6.2 records core/v1 events
    (record.EventRecorder: ``count`` and ``lastTimestamp`` grow on repeats); v1.7.0 records
    events.k8s.io/v1 ones (events.EventRecorder: ``eventTime``, repeats in ``series``), read
    here through core/v1 where ``count`` and ``lastTimestamp`` stay empty."""
    series = event.get("series") or {}
    return ((event.get("metadata") or {}).get("uid"), event.get("count"),
            event.get("lastTimestamp"), event.get("eventTime"), series.get("count"),
            series.get("lastObservedTime"))


def _event_time(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    return str(series.get("lastObservedTime") or event.get("lastTimestamp")
               or event.get("eventTime") or (event.get("metadata") or {}).get(
                   "creationTimestamp") or "")


def new_events(events: Iterable[Mapping[str, Any]], seen: frozenset[tuple[Any, ...]] | None,
               rayservice_uid: str | None) -> list[Mapping[str, Any]]:
    """The events about this RayService object (by uid: a deleted namesake's do not count)
    recorded or repeated since ``seen`` was taken, oldest first. ``seen=None``: none."""
    if seen is None:
        return []
    fresh = [e for e in events
             if event_fingerprint(e) not in seen
             and not (rayservice_uid and (e.get("involvedObject") or {}).get("uid")
                      not in (None, rayservice_uid))]
    return sorted(fresh, key=_event_time)


def event_text(event: Mapping[str, Any]) -> str:
    """``Reason: message`` of an event (core/v1 message or events.k8s.io note)."""
    return f"{event.get('reason')}: {event.get('message') or event.get('note') or ''}".strip()


def last_warning(events: Sequence[Mapping[str, Any]]) -> str:
    """``; last warning ...`` for a progress line, or nothing."""
    warnings = [e for e in events if e.get("type") == "Warning"]
    return f"; last warning {event_text(warnings[-1])}" if warnings else ""
