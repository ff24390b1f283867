"""FinServe's metrics are kept in the process and recorded through Ray's API in bulk."""

import asyncio

from deployments import metrics


class Recording:
    """Stands in for the Ray metric behind a buffered one: what reached Ray's API."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("observe", value, tags))


def _buffered() -> tuple[metrics.BufferedCounter, metrics.BufferedHistogram, Recording]:
    counter = metrics.BufferedCounter("test_counter", "a test counter", ("model",))
    histogram = metrics.BufferedHistogram("test_histogram", "a test histogram", [1, 10],
                                          ("model",))
    ray = Recording()
    counter.metric = histogram.metric = ray
    return counter, histogram, ray


def test_updates_reach_ray_once_per_interval_summed_and_every_observation_kept():
    counter, histogram, ray = _buffered()

    async def go() -> list:
        for _ in range(50):
            counter.inc(tags={"model": "fraud"})
            histogram.observe(2.5, tags={"model": "fraud"})
        counter.inc(3, tags={"model": "credit"})
        before = list(ray.calls)
        await asyncio.sleep(metrics.FLUSH_INTERVAL_S * 3)
        return before

    before = asyncio.run(go())
    assert before == []  # nothing on the request path
    assert sorted((c for c in ray.calls if c[0] == "inc"), key=str) == [
        ("inc", 3.0, {"model": "credit"}), ("inc", 50.0, {"model": "fraud"})]
    assert [c for c in ray.calls if c[0] == "observe"] == [
        ("observe", 2.5, {"model": "fraud"})] * 50


def test_without_an_event_loop_updates_are_recorded_at_once():
    counter, histogram, ray = _buffered()
    counter.inc(2, tags={"model": "aml"})
    histogram.observe(7.0, tags={"model": "aml"})
    assert ray.calls == [("inc", 2.0, {"model": "aml"}), ("observe", 7.0, {"model": "aml"})]
