"""`faceagent demo`: the real live loop on the bundled clip, on a machine with no camera and no broker.

It enrolls the performer from one of the clip's own frames into a fresh temporary gallery, replays the
whole clip through `AgentService` (every frame, as fast as the machine allows) and prints each event as
a JSON line. With a broker configured the events are published too; without one they stay in the
outbox, and the demo says so.
"""

from __future__ import annotations

import io
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import Settings
from agent.errors import FaceagentError
from agent.files import bundled_sample
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.service.app import AgentService, RunOptions, pipeline_options, print_event
from agent.sources.pyav import PyavSource
from agent.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

CLIP_NAME = "hamilton_clip.mp4"
PERFORMER = "Lin-Manuel Miranda"
ENROLL_FRAME = 150  # a clear, frontal view of the performer
CLIP_FPS = 29.97


def bundled_clip() -> Path:
    """The clip shipped in the wheel (agent/_samples) or in the source checkout (samples/)."""
    found = bundled_sample(CLIP_NAME)
    if found is not None:
        return found
    raise FaceagentError(f"the demo clip {CLIP_NAME} is missing from this installation")


def enroll_from_clip(clip: Path, settings: Settings, gallery: Path) -> str:
    """Enroll the performer from frame ENROLL_FRAME of the clip; returns his person id."""
    source = PyavSource(str(clip), "file")
    source.open()
    try:
        frame = None
        for _ in range(ENROLL_FRAME + 1):
            frame = source.read()
            if frame is None:
                break
        if frame is None:
            raise FaceagentError(f"{clip} has fewer than {ENROLL_FRAME + 1} frames")
    finally:
        source.close()
    pipeline = FacePipeline(pipeline_options(settings))
    with GalleryStore.open(gallery) as store:
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery, pipeline.embedder), settings)
        photo = _png(frame.image)
        result = enroller.enroll([(f"{clip.name}#frame{ENROLL_FRAME}", photo)], actor="demo", name=PERFORMER)
    return result.person.id


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def run_demo(settings: Settings, mqtt_url: str | None = None, keep: Path | None = None) -> int:
    clip = bundled_clip()
    with tempfile.TemporaryDirectory(prefix="faceagent-demo-") as scratch:
        folder = keep or Path(scratch)
        gallery = folder / "demo-gallery.db"
        person_id = enroll_from_clip(clip, settings, gallery)
        print(
            f"faceagent demo: enrolled {PERFORMER} ({person_id}) from frame {ENROLL_FRAME} of {clip.name}",
            file=sys.stderr,
        )
        # Replayed at the clip's own rate, as the camera that filmed it would have delivered it.
        camera = replace(settings.camera, fps=CLIP_FPS)
        demo_settings = replace(settings, camera=camera, events=replace(settings.events, camera_id="demo"))
        options = RunOptions(source=f"file:{clip}", mqtt_url=mqtt_url, db=gallery, lossless=True, on_event=print_event)
        service = AgentService(demo_settings, options)
        service.install_signal_handlers()
        code = service.run()
        stats = service.recognizer.stats
        print(
            f"faceagent demo: {stats.frames} frames, {stats.faces} faces, {stats.embeddings} embeddings, "
            f"{stats.decisions} decisions, {service.events_written} events",
            file=sys.stderr,
        )
        if service.link is None:
            with GalleryStore.open(gallery) as store:
                pending = len(store.pending_events(limit=100000))
            print(
                f"faceagent demo: no broker configured (--mqtt URL or mqtt.url): {pending} events kept in the "
                f"outbox of {gallery if keep else 'the temporary gallery, removed now'}",
                file=sys.stderr,
            )
        return code
