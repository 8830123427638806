"""Status, telemetry and presence documents: figures about the device, never an image or an embedding.

`status` is what an operator needs to tell devices apart and spot a stale gallery (version, model ids,
gallery size and digest, uptime); `telemetry` is how the device is coping (frame rate, latency
percentiles, drops, outbox depth, temperature, memory). Both carry the state file system's health
(`storage`): a full disk is a condition to see at a glance and a figure to trend. The caller measures
the frame figures; this module only reads what the operating system offers and shapes the documents
(`agent.wire`: schema, UTC ISO-8601 times).

Telemetry is published without retain, so a console that starts later would see only what comes after it:
`TelemetryHistory` keeps the last hour of the published documents in memory (never on disk), thinned, for
`get_telemetry`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.gallery.store import GalleryStore
from agent.identity import utc_now
from agent.link.outbox import OutboxStats
from agent.storage import StorageReport
from agent.wire import (
    OFFLINE,
    ONLINE,
    SCHEMA,
    FrameSection,
    GallerySection,
    HealthSection,
    OfflineStatus,
    OnlineStatus,
    Presence,
    StorageSection,
    TelemetryDocument,
    TelemetryHistoryPage,
    encode,
    reenrollment_count,
)

THERMAL = Path("/sys/class/thermal")
_CPU_ZONES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp", "cpu")
HISTORY_SECONDS = 3600.0
HISTORY_POINTS = 120  # one per 30 s: a chart an hour wide draws the same line from 120 points as from 3600
# The documents are kept encoded, as published: one is 476 bytes (three latency stages, outbox, storage),
# so 120 take about 57 KB; this caps them whatever a document grows to (a long storage error, more stages).
HISTORY_BYTES = 128 * 1024


@dataclass(frozen=True)
class GallerySummary:
    people: int
    templates: int
    digest: str  # changes whenever a person is added, renamed or erased, or a model's template count changes


@dataclass(frozen=True)
class StageLatency:
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> StageLatency:
        """Nearest-rank percentiles of a window of samples (NaN when the window is empty)."""
        ordered = sorted(samples_ms)
        if not ordered:
            return cls(math.nan, math.nan)

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return cls(rank(0.50), rank(0.95))


@dataclass(frozen=True)
class FrameFigures:
    """Measured by the frame loop over its last window."""

    fps: float
    latency_ms: Mapping[str, StageLatency]  # per stage, e.g. detect, embed, total
    dropped_frames: int


def gallery_summary(store: GalleryStore) -> GallerySummary:
    """Counts and a digest of ids, update times and per-model template counts (no names, no embeddings).

    The digest hashes one line per person, "id|updated_at|model=n,model=n" in enrollment order."""
    lines: list[str] = []
    templates = 0
    person: str | None = None
    updated = ""
    per_model: list[str] = []
    for person_id, updated_at, model_id, count in store.people_with_counts():
        if person_id != person:
            if person is not None:
                lines.append(f"{person}|{updated}|{','.join(per_model)}\n")
            person, updated, per_model = person_id, updated_at, []
        if model_id is not None:
            per_model.append(f"{model_id}={count}")
            templates += count
    if person is not None:
        lines.append(f"{person}|{updated}|{','.join(per_model)}\n")
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:16]
    return GallerySummary(len(lines), templates, digest)


def cpu_temperature(root: Path = THERMAL) -> float | None:
    """Degrees Celsius from the CPU's thermal zone (else the first readable one); None where there is none."""
    readings: list[tuple[bool, float]] = []
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text(encoding="ascii").strip()
            value = int((zone / "temp").read_text(encoding="ascii").strip()) / 1000.0
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        readings.append((kind in _CPU_ZONES, value))
    if not readings:
        return None
    preferred = [value for is_cpu, value in readings if is_cpu]
    return round((preferred or [readings[0][1]])[0], 1)


def rss_mb() -> float:
    """Resident memory of this process (the peak where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass(frozen=True)
class _Kept:
    clock: float  # the history's clock (monotonic) when the document was added
    at: datetime  # the document's own `at`, for `since`
    encoded: bytes


class TelemetryHistory:
    """The telemetry documents of the last `seconds`, at most one per `seconds / max_points` (the first of
    each such slot) and at most `max_bytes` of them encoded, oldest out first. Kept as built for publishing,
    so those the broker never saw (the link was down) are here too. In memory only: a restart starts a new
    hour. Thread-safe: the frame loop adds, the command thread reads."""

    def __init__(
        self,
        *,
        seconds: float = HISTORY_SECONDS,
        max_points: int = HISTORY_POINTS,
        max_bytes: int = HISTORY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds, self.max_points, self.max_bytes, self.clock = seconds, max_points, max_bytes, clock
        self.spacing = seconds / max_points
        self.bytes = 0
        self._kept: deque[_Kept] = deque()
        self._lock = threading.Lock()

    def add(self, document: TelemetryDocument) -> bool:
        """Keep `document` unless one of its slot is kept already (or it alone is over the byte cap)."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            if self._kept and self._slot(self._kept[-1].clock) == self._slot(now):
                return False  # before encoding: most documents are not kept (one per slot)
            encoded = encode(document)
            if len(encoded) > self.max_bytes:
                return False
            self._kept.append(_Kept(now, datetime.fromisoformat(document["at"]), encoded))
            self.bytes += len(encoded)
            while len(self._kept) > self.max_points or self.bytes > self.max_bytes:
                self.bytes -= len(self._kept.popleft().encoded)
            return True

    def page(self, since: datetime | None = None) -> TelemetryHistoryPage:
        """The kept documents, oldest first; with `since`, only those whose `at` is later."""
        with self._lock:
            self._expire(self.clock())
            kept = [entry.encoded for entry in self._kept if since is None or entry.at > since]
        return {
            "at": utc_now(),
            "history_seconds": self.seconds,
            "spacing_seconds": self.spacing,
            "points": [json.loads(encoded) for encoded in kept],
        }

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def _slot(self, moment: float) -> int:
        return math.floor(moment / self.spacing)

    def _expire(self, now: float) -> None:
        while self._kept and self._kept[0].clock < now - self.seconds:
            self.bytes -= len(self._kept.popleft().encoded)


class Telemetry:
    """Builds the documents of one running agent; it remembers when the agent started and, in `history`,
    the last hour of telemetry it was asked to keep."""

    def __init__(
        self,
        device_id: str,
        version: str,
        models: Mapping[str, str],
        *,
        thermal_root: Path = THERMAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.version = version
        self.models = dict(models)  # role -> model id, e.g. {"detector": ..., "embedder": ...}
        self.thermal_root = thermal_root
        self.clock = clock
        self.started = clock()
        self.started_at = utc_now()
        self.history = TelemetryHistory(clock=clock)

    def uptime_s(self) -> int:
        return int(self.clock() - self.started)

    def status(
        self,
        gallery: GallerySummary | None,
        storage: StorageReport | None = None,
        *,
        needing_reenrollment: int | None = None,
    ) -> OnlineStatus:
        """The retained `online` document; `gallery` null until the gallery has been summarised (at start-up
        the agent does not wait on queries that grow with the gallery). `needing_reenrollment`: the people the
        loaded embedder cannot recognize, when counted."""
        section: GallerySection | None = None
        if gallery is not None:
            section = {"people": gallery.people, "templates": gallery.templates, "digest": gallery.digest}
            if needing_reenrollment is not None:
                section |= reenrollment_count(needing_reenrollment)
        document: OnlineStatus = {
            "schema": SCHEMA,
            "device": self.device_id,
            "at": utc_now(),
            "state": ONLINE,
            "version": self.version,
            "models": self.models,
            "gallery": section,
            "started_at": self.started_at,
            "uptime_s": self.uptime_s(),
        }
        if storage is not None:
            document["storage"] = storage_json(storage)
        return document

    def offline(self, reason: str) -> OfflineStatus:
        """The retained `offline` document: `reason` "stopped" from a clean stop, "connection lost" as the will.

        The will is registered at connect time, so its `at` is that moment, not the moment of the loss.
        """
        return {
            "schema": SCHEMA,
            "device": self.device_id,
            "at": utc_now(),
            "state": OFFLINE,
            "reason": reason,
            "version": self.version,
            "started_at": self.started_at,
        }

    def telemetry(
        self, frames: FrameFigures | None, outbox: OutboxStats | None, storage: StorageReport | None = None
    ) -> TelemetryDocument:
        measured: FrameSection = {}
        if frames is not None:
            measured = {
                "fps": _finite(frames.fps),
                "latency_ms": {
                    stage: {"p50": _finite(lat.p50_ms), "p95": _finite(lat.p95_ms)}
                    for stage, lat in frames.latency_ms.items()
                },
                "dropped_frames": int(frames.dropped_frames),
            }
        health: HealthSection = {}
        if outbox is not None:
            health["outbox"] = {
                "depth": outbox.depth,
                "inflight": outbox.inflight,
                "published": outbox.published,
                "dropped_events": outbox.dropped,
            }
        if storage is not None:
            health["storage"] = storage_json(storage)
        return {
            "schema": SCHEMA,
            "device": self.device_id,
            "at": utc_now(),
            "uptime_s": self.uptime_s(),
            **measured,
            **health,
            "cpu_temp_c": cpu_temperature(self.thermal_root),
            "memory": {"rss_mb": rss_mb()},
        }

    def presence(self, faces: int) -> Presence:
        """Whether a face is in view now (the Home Assistant "face present" sensor reads this)."""
        return {"schema": SCHEMA, "device": self.device_id, "at": utc_now(), "present": faces > 0, "faces": int(faces)}


def storage_json(report: StorageReport) -> StorageSection:
    """`state` "ok" or "full" and `since` when; `dropped_events`: events not written for lack of space."""
    return {
        "state": str(report.state),
        "since": report.since,
        "free_bytes": report.free_bytes,
        "dropped_events": report.dropped_events,
        "last_error": report.last_error,
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: an unmeasured figure is null."""
    return round(float(value), 2) if math.isfinite(value) else None
