"""Live enrollment: how many frames a capture needs, what its views look like, and what an armed window costs.

    .venv/bin/python scripts/bench_capture.py                 # K = 3, 5, 10 views on the clip's performer
    .venv/bin/python scripts/bench_capture.py --views 5 --repeat 3

The scene is the Hamilton clip's performer alone (Lin-Manuel Miranda, frames 83-211, 29.97 fps), fed to the
service's own path (`Recognizer.process` with a `CaptureWindow` as its views hook) until the window has its
views. Reported per K: frames and clip seconds needed, the views' spread of head pose (yaw and pitch from the
keypoints) and the closest pair's embedding distance. The cost: the same frames with Miranda enrolled from his
photo (so his track is decided after a few frames, and an idle recognizer stops embedding it), once idle and
once armed (capture windows one after another, each collecting 5 more views of him: every frame embedded and
judged), interleaved frame by frame in the same run; the median wall time per frame after the decision, and
the ratio. The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from _bench_common import format_table, load_average, load_pipeline, resolve_data_dir

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Consent
from agent.recognition.capture import CaptureRequest, CaptureWindow
from agent.recognition.enrollment import Enroller
from agent.recognition.recognizer import Recognizer, TrackView
from agent.vision.embedder import EmbedderInfo
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline

FRAMES = Path("sequence/hamilton_clip/frames")
ENROLL = Path("sequence/hamilton_clip/enroll/Lin-Manuel_Miranda.png")
SHOT = range(83, 212)
FPS = 29.97
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Endless:
    """Capture windows one after the other (a new one as soon as one has its views): armed on every frame."""

    def __init__(self, settings: Settings, person_id: str) -> None:
        self.settings, self.person_id = settings, person_id
        self.window = self._arm()
        self.captures = 0

    def _arm(self) -> CaptureWindow:
        consent = Consent("bench", "2025-06-01T12:00:00.000Z", "bench")
        request = CaptureRequest("bench", consent, person_id=self.person_id, views=5)
        return CaptureWindow("bench", request, self.settings, metric="cosine")

    def wants_views(self) -> bool:
        return True

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None:
        self.window.observe(views, model)
        if not self.window.wants_views():
            self.captures += 1
            self.window = self._arm()


def capture(pipeline: FacePipeline, frames: list[np.ndarray], views: int, folder: Path) -> list[object]:
    settings = Settings()
    matcher = Matcher.for_gallery(settings.gallery)
    consent = Consent("bench", "2025-06-01T12:00:00.000Z", "bench")
    window = CaptureWindow("bench", CaptureRequest("bench", consent, name="x", views=views), settings, metric="cosine")
    with GalleryStore.open(folder / f"capture{views}.db") as store:
        recognizer = Recognizer(pipeline, matcher, store, settings, "bench", views=window)
        used = 0
        for index, frame in enumerate(frames):
            if not window.wants_views():
                break
            recognizer.process(frame, T0 + timedelta(seconds=index / FPS))
            used += 1
    held = window.take_views()
    if len(held) < views:
        return [views, used, "-", "-", "-", f"not done: {window.report()}"]
    yaw = [h.pose[0] for h in held]
    pitch = [h.pose[1] for h in held]
    closest = (
        min(float(np.linalg.norm(a.unit - b.unit)) for a, b in itertools.combinations(held, 2)) if views > 1 else 0
    )
    spread = f"{min(yaw):+.2f}..{max(yaw):+.2f}"
    return [views, used, f"{used / FPS:.2f}", spread, f"{max(pitch) - min(pitch):.2f}", f"{closest:.3f}"]


def cost(pipeline: FacePipeline, frames: list[np.ndarray], shared: Path, folder: Path, repeat: int) -> list[object]:
    """Median ms per frame after the decision, idle and armed, interleaved frame by frame."""
    settings = Settings()
    matcher = Matcher.for_gallery(settings.gallery)
    with GalleryStore.open(folder / "cost.db") as store:
        enroller = Enroller(pipeline, store, matcher, settings)
        person = enroller.enroll([(ENROLL.name, shared / ENROLL)], actor="bench", name="M").person
        idle_ms: list[float] = []
        armed_ms: list[float] = []
        captures = 0
        for _ in range(repeat):
            endless = Endless(settings, person.id)
            idle = Recognizer(pipeline, matcher, store, settings, "idle")
            armed = Recognizer(pipeline, matcher, store, settings, "armed", views=endless)
            for index, frame in enumerate(frames):
                moment = T0 + timedelta(seconds=index / FPS)
                for recognizer, times in ((idle, idle_ms), (armed, armed_ms)):
                    started = time.perf_counter()
                    recognizer.process(frame, moment)
                    if recognizer.stats.decisions:
                        times.append(1000 * (time.perf_counter() - started))
            captures += endless.captures
    a, b = statistics.median(idle_ms), statistics.median(armed_ms)
    return [len(idle_ms), captures, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--views", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--repeat", type=int, default=2, help="passes over the shot for the cost (default 2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    shared = resolve_data_dir(args.data, [str(FRAMES), str(ENROLL)])
    pipeline = load_pipeline(None, args.threads)
    frames = [load_image(shared / FRAMES / f"frame_{index:04d}.jpg") for index in SHOT]
    with tempfile.TemporaryDirectory() as folder:
        rows = [capture(pipeline, frames, views, Path(folder)) for views in args.views]
        print(f"capture on the performer's shot ({len(frames)} frames at {FPS} fps), load {load_average()}")
        print(format_table(["views", "frames", "clip s", "yaw range", "pitch range", "closest pair"], rows))
        row = cost(pipeline, frames, shared, Path(folder), args.repeat)
        print(f"\nper-frame cost of a decided face, idle vs armed (interleaved), load {load_average()}")
        print(format_table(["frames", "captures done", "idle ms (median)", "armed ms (median)", "armed / idle"], [row]))


if __name__ == "__main__":
    main()
