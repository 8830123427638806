"""`bench_speed.py --live`: the whole live loop (`AgentService`) on the clip, with a large gallery.

Measures what a device does, not one stage: source → detect → track → embed only when needed →
match against 10,000 templates → events in SQLite. Runs in its own process so peak RSS is the agent's.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import ModelSettings, Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.service.app import AgentService, RunOptions, pipeline_options
from agent.vision.pipeline import FacePipeline

ENROL = Path("sequence/hamilton_clip/enroll/Lin-Manuel_Miranda.png")
FRAMES = Path("sequence/hamilton_clip/frames")
DLIB_NORM = 1.42  # mean norm of real dlib embeddings (LFW); synthetic templates are scaled to it


def build_gallery(path: Path, data: Path, settings: Settings, templates: int) -> None:
    """The performer, enrolled from his photo, among synthetic people (4 templates each) up to `templates`."""
    pipeline = FacePipeline(pipeline_options(settings))
    info = pipeline.embedder.info
    rng = np.random.default_rng(0)
    with GalleryStore.open(path) as store:
        Enroller(pipeline, store, Matcher.for_gallery(settings.gallery), settings).enroll(
            [(ENROL.name, data / ENROL)], actor="bench", name="Lin-Manuel Miranda"
        )
        with store.transaction():
            for start in range(1, templates, 4):
                person = store.add_person(f"synthetic {start // 4}")
                for _ in range(min(4, templates - start)):
                    vector = rng.standard_normal(info.dimensions).astype(np.float32)
                    vector *= DLIB_NORM / np.linalg.norm(vector)
                    store.add_template(person.id, vector, model_id=info.model_id, model_sha256=info.sha256, quality={})


def run_live(
    data: Path, threads: int, templates: int, embedder: str | None = None, runtime: str | None = None
) -> dict[str, Any]:
    settings = Settings(models=ModelSettings(embedder=embedder, runtime=runtime, threads=threads))
    with tempfile.TemporaryDirectory(prefix="faceagent-live-") as scratch:
        gallery = Path(scratch) / "gallery.db"
        build_gallery(gallery, data, settings, templates)
        service = AgentService(settings, RunOptions(source=f"folder:{data / FRAMES}", db=gallery, lossless=True))
        started = time.monotonic()
        service.run()
        elapsed = time.monotonic() - started
    stats = service.recognizer.stats
    latency = {
        stage: {"mean": float(np.mean(v)), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
        for stage, v in service.clock.samples.items()
    }
    return {
        "frames": stats.frames,
        "faces": stats.faces,
        "embeddings": stats.embeddings,
        "decisions": stats.decisions,
        "recognized": stats.recognized,
        "events": service.events_written,
        "templates": len(service.matcher),
        "seconds": elapsed,
        "fps": stats.frames / elapsed,
        "latency_ms": latency,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runtime": service.status.runtime,
        "embedder": service.recognizer.pipeline.embedder.info.model_id,
        "threads": threads,
    }


def print_live(result: dict[str, Any]) -> bool:
    print(
        f"live loop ({result['runtime']}, {result['threads']} threads, embedder {result['embedder']}): "
        f"{result['frames']} frames in "
        f"{result['seconds']:.1f} s = {result['fps']:.1f} frames/s end to end; {result['faces']} faces, "
        f"{result['embeddings']} embeddings, {result['decisions']} decisions, {result['events']} events; "
        f"gallery {result['templates']} templates"
    )
    for stage, figures in result["latency_ms"].items():
        print(
            f"  {stage:14} mean {figures['mean']:6.2f} ms   p50 {figures['p50']:6.2f} ms   p95 {figures['p95']:6.2f} ms"
        )
    ok = result["peak_rss_mb"] < 200
    print(f"{'PASS' if ok else 'FAIL'}  peak RSS < 200 MB with {result['templates']} templates: "
          f"{result['peak_rss_mb']:.0f} MB")  # fmt: skip
    sys.stdout.flush()
    return ok
