"""`/metrics`: the fleet's newest telemetry in the Prometheus exposition format, one series per device.

A custom collector reads the `FleetState` at scrape time, so a device that disappears from the broker
disappears from the scrape (no stale series kept by the client library). No names, no person ids: figures
about devices only.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.cli.console.fleet import FleetState, telemetry_point

_GAUGES = (  # (metric name, help, the telemetry_point field)
    ("faceagent_frames_per_second", "Frames processed per second over the last telemetry window", "fps"),
    ("faceagent_cpu_temperature_celsius", "CPU temperature", "cpu_temp_c"),
    ("faceagent_outbox_depth", "Events stored on the device, not yet acknowledged by the broker", "outbox_depth"),
    ("faceagent_dropped_frames", "Frames the camera delivered that the loop had no time for", "dropped_frames"),
)


class FleetCollector(Collector):
    def __init__(self, state: FleetState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self.state.fleet()
        up = GaugeMetricFamily("faceagent_up", "1 when the device's retained status says online", labels=["device"])
        people = GaugeMetricFamily("faceagent_gallery_people", "People enrolled on the device", labels=["device"])
        stale = GaugeMetricFamily(
            "faceagent_people_needing_reenrollment", "People the loaded embedder cannot match", labels=["device"]
        )
        gauges = {field: GaugeMetricFamily(name, text, labels=["device"]) for name, text, field in _GAUGES}
        latency = GaugeMetricFamily(
            "faceagent_latency_milliseconds",
            "Per-stage frame latency percentiles",
            labels=["device", "stage", "quantile"],
        )
        for view in fleet:
            device = view["device"]
            up.add_metric([device], 1.0 if view["online"] else 0.0)
            gallery = (view["status"] or {}).get("gallery")
            if isinstance(gallery, dict):
                for family, key in ((people, "people"), (stale, "people_needing_reenrollment")):
                    if isinstance(gallery.get(key), int):
                        family.add_metric([device], float(gallery[key]))
            telemetry = view["telemetry"]
            if not isinstance(telemetry, dict):
                continue
            point = telemetry_point(telemetry)
            for field, family in gauges.items():
                value = point[field]
                if value is not None:
                    family.add_metric([device], value)
            stages = telemetry.get("latency_ms")
            for stage, figures in stages.items() if isinstance(stages, dict) else []:
                for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
                    value = figures.get(key) if isinstance(figures, dict) else None
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        latency.add_metric([device, str(stage)[:64], quantile], float(value))
        yield from (up, people, stale, *gauges.values(), latency)


def registry_for(state: FleetState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state))
    return registry
