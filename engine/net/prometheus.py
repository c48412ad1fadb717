"""`/metrics`: the station's figures in Prometheus's text format (prometheus_client), read at
scrape time from the parts that own them; one registry per station, nothing module-level."""
from __future__ import annotations

import typing as tp

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .broadcast import Broadcaster
from .control import Controller


class StationCollector:
    """Collects one station: generation, buffering, underruns, listeners, bytes, control."""

    def __init__(self, station, broadcaster: Broadcaster, controller: Controller):
        self.station = station
        self.broadcaster = broadcaster
        self.controller = controller

    def collect(self) -> tp.Iterator:
        status, b, metrics = self.station.status(), self.broadcaster, self.station.metrics
        yield from metrics.stride_seconds.collect()
        yield from metrics.change_latency.collect()
        yield _gauge("radio_real_time_factor", "Audio seconds made per wall second, last stride",
                     status["real_time_factor"] or 0.0)
        yield _gauge("radio_buffered_seconds", "Seconds generated ahead of the playhead", status["buffered_seconds"])
        yield _gauge("radio_played_seconds", "Seconds of the stream played", status["played_seconds"])
        yield _counter("radio_strides", "Strides generated", status["strides"])
        yield _counter("radio_underruns", "Times the playhead reached unwritten audio", status["underruns"])
        yield _counter("radio_generation_errors", "Strides that failed", status["generation_errors"])
        yield _counter("radio_reader_overruns", "Outputs or encoders that fell behind", status["reader_overruns"])
        listeners = GaugeMetricFamily("radio_listeners", "Listeners connected, by kind", labels=["kind"])
        for kind, count in sorted(b.counts().items()):
            listeners.add_metric([kind], count)
        yield listeners
        yield _counter("radio_listeners_dropped", "Listeners dropped for lagging", b.dropped_total)
        sent = CounterMetricFamily("radio_sent_bytes", "Bytes handed to listeners, by stream", labels=["stream"])
        for stream, count in sorted(b.sent_bytes.items()):
            sent.add_metric([stream], count)
        yield sent
        commands = CounterMetricFamily("radio_control_commands", "Control commands, by command and result",
                                       labels=["command", "result"])
        for (command, result), count in sorted(self.controller.counts.items()):
            commands.add_metric([command, result], count)
        yield commands


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsExporter:
    """The registry of one station and its text exposition."""

    def __init__(self, station, broadcaster: Broadcaster, controller: Controller):
        self.collector = StationCollector(station, broadcaster, controller)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LineupCollector:
    """Every station of a lineup in one exposition, each sample labelled with its `station`;
    `collectors()`: station name → its StationCollector, read at scrape time (stations come and go)."""

    def __init__(self, collectors: tp.Callable[[], tp.Mapping[str, StationCollector]]):
        self.collectors = collectors

    def collect(self) -> tp.Iterator:
        merged: tp.Dict[str, Metric] = {}
        for station, collector in sorted(self.collectors().items()):
            for family in collector.collect():
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    out.add_sample(sample.name, dict(sample.labels, station=station), sample.value, sample.timestamp)
        yield from merged.values()


class LineupExporter:
    """The lineup's registry and its text exposition (GET /metrics of several stations)."""

    def __init__(self, collectors: tp.Callable[[], tp.Mapping[str, StationCollector]]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LineupCollector(collectors))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
