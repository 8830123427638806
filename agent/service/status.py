"""The status and telemetry documents of the running agent, and the frame figures behind telemetry.

Status summarises the gallery, a query that grows with it: it is built on the gallery thread (published) or
the command thread (get_status), each through its own connection, never on the frame loop. Telemetry is
the frame loop's own figures, built there.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.commands.signing import CommandSecurity
from agent.config import Matching
from agent.gallery.store import GalleryStore
from agent.link.outbox import OutboxStats
from agent.link.telemetry import FrameFigures, StageLatency, Telemetry, gallery_summary
from agent.service.provisioning import read_status as read_provisioning
from agent.sources.latest import LatestFrame
from agent.storage import StorageHealth
from agent.wire import OnlineStatus, TelemetryDocument

LATENCY_WINDOW = 300  # frames


class FrameClock:
    """fps and per-stage latency over the last frames, for telemetry and systemd STATUS."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[float]] = {}
        self.stamps: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, stages_ms: dict[str, float]) -> None:
        self.stamps.append(time.monotonic())
        for stage, value in stages_ms.items():
            self.samples.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(value)

    @property
    def fps(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / max(self.stamps[-1] - self.stamps[0], 1e-9)

    def figures(self, dropped: int) -> FrameFigures:
        latency = {stage: StageLatency.of(list(values)) for stage, values in self.samples.items()}
        return FrameFigures(fps=self.fps, latency_ms=latency, dropped_frames=dropped)


@dataclass(frozen=True)
class StatusReport:
    """Shapes the documents from the parts they describe; safe from any thread (the store is the caller's)."""

    telemetry: Telemetry
    storage: StorageHealth
    source: LatestFrame
    security: CommandSecurity
    release_keys: tuple[str, ...]  # ids of the trusted release keys
    runtime: str  # the TFLite runtime and its version (a model swap keeps it)
    state_dir: Path
    warnings: tuple[str, ...]  # settings that weaken the device, found at start
    matching: Callable[[], Matching]  # the live matcher's figures and where each came from

    def status(self, store: GalleryStore | None) -> OnlineStatus:
        """The status with the gallery summarised through `store`, never on the frame loop: the summary grows
        with the gallery. None: the first status, held by the link before anything started (no gallery
        summary, no camera yet)."""
        if store is None:
            document = self.telemetry.status(None, self.storage.report())
        else:
            with store.snapshot():
                summary = gallery_summary(store)
                stale = store.count_needing_reenrollment(self.telemetry.models["embedder"])
                adaptive = store.count_adaptive()
            document = self.telemetry.status(summary, self.storage.report(), needing_reenrollment=stale)
            if document["gallery"] is not None:
                document["gallery"]["adaptive_templates"] = adaptive
                document["gallery"]["matching"] = self.matching().describe()
        document["camera"] = None if store is None else self.source.status().to_json()
        document["runtime"] = self.runtime
        document["provisioning"] = read_provisioning(self.state_dir)
        document["warnings"] = list(self.warnings)
        document["commands"] = self.security.describe() | {"release_keys": sorted(self.release_keys)}
        return document

    def telemetry_document(self, clock: FrameClock, outbox: OutboxStats | None) -> TelemetryDocument:
        """From the frame loop: its figures, the outbox's and the file system's; kept in the telemetry history
        (`get_telemetry`) as it is published."""
        figures = clock.figures(self.source.status().dropped)
        document = self.telemetry.telemetry(figures, outbox, self.storage.report())
        self.telemetry.history.add(document)
        return document
