"""Prometheus metrics. Hot paths only bump plain integers on the node (`NodeStats`); this
collector reads them at scrape time, so a delivery never takes a metrics lock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class NodeStats:
    """Running totals kept by the node."""

    messages_in: int = 0
    published: int = 0
    deliveries: int = 0
    slow_members_dropped: int = 0


class NodeCollector(Collector):
    def __init__(self, stats: NodeStats, connections: Callable[[], int],
                 channels: Callable[[], int]) -> None:
        self.stats = stats
        self.connections = connections
        self.channels = channels

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("c8ws_connections", "Open connections on this node",
                                value=self.connections())
        yield GaugeMetricFamily("c8ws_channels", "Channels with members on this node",
                                value=self.channels())
        for name, help_text, value in (
            ("c8ws_messages_in", "Frames received from members", self.stats.messages_in),
            ("c8ws_messages_published", "Records published", self.stats.published),
            ("c8ws_deliveries", "Records queued for members", self.stats.deliveries),
            ("c8ws_slow_members_dropped", "Members closed with 4008",
             self.stats.slow_members_dropped),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


class StoreMetrics:
    """Batch sizes and commit latency of the store's group commit."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "c8ws_store_batch_records", "Records per committed batch", registry=registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
        self.commit_seconds = Histogram(
            "c8ws_store_commit_seconds", "Time to commit one batch", registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))

    def observe_commit(self, records: int, seconds: float) -> None:
        self.batch_size.observe(records)
        self.commit_seconds.observe(seconds)
