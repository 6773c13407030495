"""metrics.observe_all against Histogram.observe: the same buckets and sum."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from ledger.observability import metrics


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for m in h.collect() for s in m.samples}


def test_observe_all_counts_like_observe_one_by_one() -> None:
    buckets = (0.005, 0.01, 0.1, 1.0, 5.0)
    values = [0.0, 0.005, 0.0051, 0.01, 0.05, 0.1, 0.99, 1.0, 4.0, 5.0, 7.5, 100.0, 0.01]
    one = Histogram("one", "one by one", buckets=buckets, registry=CollectorRegistry())
    bulk = Histogram("bulk", "all at once", buckets=buckets, registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    metrics.observe_all(bulk, values)
    metrics.observe_all(bulk, [])  # nothing: nothing changes
    mine = {(n.replace("bulk", "one"), le): v for (n, le), v in _samples(bulk).items()}
    theirs = {k: v for k, v in _samples(one).items() if not k[0].endswith("_created")}
    mine = {k: v for k, v in mine.items() if not k[0].endswith("_created")}
    assert mine == theirs
    assert theirs[("one_count", "")] == len(values)
