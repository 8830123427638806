"""Status and telemetry documents, and the check that nothing on the wire carries a face or an embedding."""

from __future__ import annotations

import base64
import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import EventSettings, HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.link.homeassistant import HomeAssistantDiscovery
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.outbox import OutboxPublisher, OutboxStats
from agent.link.telemetry import (
    FrameFigures,
    GallerySummary,
    StageLatency,
    Telemetry,
    cpu_temperature,
    gallery_summary,
    rss_mb,
)
from agent.recognition.events import EventEmitter
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from tests.support.broker import FAST_LINK, Broker, Received

MODELS = {"detector": "blazeface-short", "embedder": "dlib-resnet29-int8"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def telemetry(tmp_path: Path, clock: FakeClock | None = None) -> Telemetry:
    return Telemetry("dev1", "1.2.3", MODELS, thermal_root=tmp_path / "no-thermal", clock=clock or FakeClock())


def thermal_zone(root: Path, index: int, kind: str, millidegrees: str) -> None:
    zone = root / f"thermal_zone{index}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def enroll(store: GalleryStore, name: str, embedding: np.ndarray) -> str:
    person = store.add_person(name)
    store.add_template(person.id, embedding, model_id=MODELS["embedder"], model_sha256="0" * 64, quality={})
    return person.id


# ------------------------------------------------------------------------------------- documents


def test_status_names_version_models_gallery_and_uptime(tmp_path: Path) -> None:
    clock = FakeClock()
    source = telemetry(tmp_path, clock)
    clock.now += 42.7
    status = source.status(GallerySummary(people=3, templates=9, digest="abc"))
    assert status["schema"] == 1 and status["state"] == "online" and status["device"] == "dev1"
    assert (status["version"], status["models"], status["uptime_s"]) == ("1.2.3", MODELS, 42)
    assert status["gallery"] == {"people": 3, "templates": 9, "digest": "abc"}
    assert status["at"].endswith("Z")


def test_offline_document_gives_the_reason(tmp_path: Path) -> None:
    offline = telemetry(tmp_path).offline("stopped")
    assert (offline["state"], offline["reason"], offline["version"]) == ("offline", "stopped", "1.2.3")


def test_telemetry_reports_frames_latency_drops_and_outbox(tmp_path: Path) -> None:
    frames = FrameFigures(fps=14.567, latency_ms={"detect": StageLatency(11.0, 19.5)}, dropped_frames=4)
    document = telemetry(tmp_path).telemetry(frames, OutboxStats(depth=7, inflight=2, published=90, dropped=3))
    assert document["fps"] == 14.57 and document["dropped_frames"] == 4
    assert document["latency_ms"] == {"detect": {"p50": 11.0, "p95": 19.5}}
    assert document["outbox"] == {"depth": 7, "inflight": 2, "published": 90, "dropped_events": 3}
    assert document["memory"]["rss_mb"] > 0 and "cpu_temp_c" in document


def test_unmeasured_figures_are_null_so_the_json_stays_valid(tmp_path: Path) -> None:
    frames = FrameFigures(fps=math.nan, latency_ms={"embed": StageLatency.of([])}, dropped_frames=0)
    document = telemetry(tmp_path).telemetry(frames, None)
    json.dumps(document, allow_nan=False)
    assert document["fps"] is None and document["latency_ms"]["embed"] == {"p50": None, "p95": None}


def test_stage_latency_uses_nearest_rank_percentiles() -> None:
    latency = StageLatency.of([float(n) for n in range(1, 101)])
    assert (latency.p50_ms, latency.p95_ms) == (50.0, 95.0)


def test_presence_says_whether_a_face_is_in_view(tmp_path: Path) -> None:
    source = telemetry(tmp_path)
    assert (source.presence(2)["present"], source.presence(0)["present"]) == (True, False)


# ------------------------------------------------------------------------------------ the machine


def test_cpu_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    thermal_zone(tmp_path, 0, "acpitz", "30000")
    thermal_zone(tmp_path, 1, "cpu-thermal", "51234")
    assert cpu_temperature(tmp_path) == 51.2


def test_cpu_temperature_falls_back_to_any_readable_zone(tmp_path: Path) -> None:
    thermal_zone(tmp_path, 0, "acpitz", "garbage")
    thermal_zone(tmp_path, 1, "acpitz", "40500")
    assert cpu_temperature(tmp_path) == 40.5


def test_cpu_temperature_is_none_where_there_is_no_sensor(tmp_path: Path) -> None:
    assert cpu_temperature(tmp_path / "absent") is None


def test_resident_memory_is_measured() -> None:
    assert 1 < rss_mb() < 100_000


# --------------------------------------------------------------------------------------- gallery


def test_gallery_summary_counts_people_and_templates(tmp_path: Path) -> None:
    with GalleryStore.open(tmp_path / "g.db") as store:
        enroll(store, "Ada", np.ones(128, np.float32))
        enroll(store, "Bob", np.full(128, 0.5, np.float32))
        summary = gallery_summary(store)
    assert (summary.people, summary.templates) == (2, 2)


def test_gallery_digest_changes_with_every_enrollment_and_erasure(tmp_path: Path) -> None:
    with GalleryStore.open(tmp_path / "g.db") as store:
        empty = gallery_summary(store).digest
        ada = enroll(store, "Ada", np.ones(128, np.float32))
        one = gallery_summary(store).digest
        store.delete_person(ada, actor="test")
        assert len({empty, one}) == 2 and gallery_summary(store).digest == empty


# ------------------------------------------------------------------------------------ on the wire


def _numbers_in_long_arrays(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) > 8 or any(_numbers_in_long_arrays(v) for v in value)
    if isinstance(value, dict):
        return any(_numbers_in_long_arrays(v) for v in value.values())
    return False


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return max((_longest_string(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((_longest_string(v) for v in [*value.keys(), *value.values()]), default=0)
    return 0


def test_no_published_message_carries_images_or_embeddings(tmp_path: Path, broker: Broker, observe) -> None:
    rng = np.random.default_rng(7)
    embedding = rng.normal(size=128).astype(np.float32)
    path = tmp_path / "g.db"
    wire = observe(broker, ["#"])
    with GalleryStore.open(path) as store:
        ada = enroll(store, "Ada", embedding)
        summary = gallery_summary(store)
        t0 = datetime(2024, 5, 1, tzinfo=UTC)
        face = Face(box=(0.0, 0.0, 80.0, 80.0), score=0.9, keypoints=np.zeros((6, 2)))
        track = Track(1, face, 1, 9, t0, t0 + timedelta(seconds=1), frames=9, embeddings=[embedding] * 3)
        EventEmitter(EventSettings(), store, camera_id="door", model_id=MODELS["embedder"]).emit(
            track, Match(ada, "Ada", 0.2, 0.3, True), t0
        )
    source = telemetry(tmp_path)
    link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), "dev1", lambda r: None, will=source.offline("lost"))
    HomeAssistantDiscovery(link, HomeAssistantSettings(enabled=True), version="1.2.3").attach()
    outbox = OutboxPublisher(path, link, max_events=100, poll_seconds=0.05)
    link.publish_status(source.status(summary))
    outbox.start()
    link.start()
    assert link.wait_connected(5)
    link.publish_telemetry(source.telemetry(FrameFigures(10.0, {"total": StageLatency(5, 9)}, 0), outbox.stats))
    link.publish_presence(source.presence(1))
    assert wire.wait_for(lambda m: {x.topic.split("/")[-1] for x in m} >= {"face_recognized", "telemetry"}, 5)
    outbox.stop(flush_timeout=1)
    link.stop(source.offline("stopped"))
    time.sleep(0.2)

    blob = embedding.tobytes()
    forbidden = [blob, base64.b64encode(blob), base64.b64encode(blob[:48]), repr(float(embedding[0]))[:8].encode()]
    messages: list[Received] = list(wire.messages)
    assert len(messages) >= 7  # status x2, event, telemetry, presence, 2 discovery documents
    for message in messages:
        document = message.json()
        assert len(message.payload) < 4096, message.topic
        assert not _numbers_in_long_arrays(document), message.topic
        assert _longest_string(document) <= 200, message.topic
        assert not any(needle in message.payload for needle in forbidden), message.topic
