"""The gallery thread: everything that reads the whole gallery, and the one writer of the live matcher.

With its own connection, made on it: the matcher's first load (the agent is READY before it, and decides no
frame until it is done), the status document (counts, digest, people needing re-enrollment), the matcher
following every gallery write (`GallerySync`: a command's write refreshes its people; another process's
write rebuilds the matrix aside), the new embedder's matrix on a model swap, and retention every
`retention.purge_interval_seconds` whether frames arrive or not. Others hand it work as jobs (`jobs`).

A turn that fails (the file locked by the CLI for longer than the busy timeout, say) is logged and tried
again at the next one, and the frame loop never waits on it; only a first load that fails stops the agent,
with that error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from agent.config import RetentionSettings
from agent.errors import FaceagentError
from agent.gallery.matcher import Matcher, MatcherError
from agent.gallery.retention import RetentionKeeper
from agent.gallery.store import GalleryStore
from agent.gallery.sync import UNLOADED, GallerySync, GalleryWrite, recorded
from agent.link.mqtt import MqttLink
from agent.service.jobs import JobQueue, outcome
from agent.service.status import StatusReport
from agent.storage import StorageHealth
from agent.vision.embedder import FaceEmbedder

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25  # the longest sleep between two turns: jobs wake it at once
WRITE_FOLLOW_SECONDS = 30.0  # how long a command waits for the live matcher to follow its write
SWITCH_SECONDS = 120.0  # how long a model update waits for the new matcher to be built and go live


@dataclass
class GalleryParts:
    """What the gallery thread works with, made on it (SQLite connections stay on their thread)."""

    store: GalleryStore
    sync: GallerySync
    retention: RetentionKeeper


class GalleryThread:
    """`run` is the thread; the other methods are for the threads that hand it work."""

    def __init__(
        self,
        path: Path,
        matcher: Matcher,
        model_id: str,
        retention: RetentionSettings,
        *,
        storage: StorageHealth,
        status: StatusReport,
        link: MqttLink | None,
        stop: threading.Event,
        on_synced: Callable[[], None],
        on_failure: Callable[[BaseException], None],
        each_turn: Callable[[GalleryStore], None] = lambda store: None,
        before_load: Callable[[GalleryStore], object] = lambda store: None,
    ) -> None:
        """`on_synced` after another process changed the gallery; `on_failure` when the first load fails;
        `each_turn` with this thread's store once the gallery is loaded (Home Assistant's per-person sensors);
        `before_load` with it before the first load (templates carried over to the embedder in use): its failure
        is logged, and the agent starts on the gallery as it is."""
        self.path, self.matcher, self.model_id, self.retention = path, matcher, model_id, retention
        self.storage, self.status, self.link, self.stop = storage, status, link, stop
        self.on_synced, self.on_failure, self.each_turn = on_synced, on_failure, each_turn
        self.before_load = before_load
        self.jobs: JobQueue[GalleryParts] = JobQueue("the gallery thread")
        self.loaded = threading.Event()  # the matcher holds the whole gallery: frames may be decided
        self._status_wanted = threading.Event()

    # ---------------------------------------------------------------------------- from other threads

    def writing(self, store: GalleryStore) -> AbstractContextManager[set[str]]:
        """`GalleryWrites` for the command thread: the write's people are refreshed before it goes on."""
        return recorded(store, self._follow)

    def _follow(self, write: GalleryWrite) -> None:
        try:
            job = self.jobs.submit(lambda parts: parts.sync.apply(write))
            outcome(job, WRITE_FOLLOW_SECONDS, "the gallery thread did not take a gallery write")
        except (FaceagentError, MatcherError) as exc:  # the next look finds the fingerprint changed and reloads
            log.warning("the live matcher follows a write at its next look: %s", exc)

    def switch_model(self, embedder: FaceEmbedder, go_live: Callable[[Matcher], None]) -> None:
        """From the command thread: the matcher of `embedder`'s templates (under its figures) built here, then
        `go_live`; raises what stopped it (nothing changed then)."""
        model_id = embedder.info.model_id
        job = self.jobs.submit(lambda parts: parts.sync.switch_model(model_id, go_live, embedder))
        outcome(job, SWITCH_SECONDS, "the gallery thread did not take the new models")

    def use_retention(self, settings: RetentionSettings) -> None:
        """From the command thread (set_config): from the next purge on."""
        self.jobs.submit(lambda parts: _set_retention(parts.retention, settings))

    def request_status(self) -> None:
        """From the frame loop: build and publish the status at the next turn (requests meanwhile are one)."""
        self._status_wanted.set()
        self.jobs.wake()

    # ----------------------------------------------------------------------------------- the thread

    def run(self) -> None:
        try:
            store = GalleryStore.open(self.path)
        except Exception as exc:
            self.jobs.close()
            self._fail(exc)
            return
        try:
            self.before_load(store)
        except Exception:  # a full disk, a locked file: the old templates still match through the fallback
            log.exception("gallery: the step before the first load failed; loading the gallery as it is")
        sync = GallerySync(store, self.matcher, self.model_id, seen=UNLOADED)
        # Sees CLI erasures within its interval, and purges on schedule with this connection.
        parts = GalleryParts(store, sync, RetentionKeeper(store, self.retention, storage=self.storage))
        try:
            self._serve(parts)
        finally:
            self.jobs.close()  # a write or a model swap waiting for this thread fails now
            store.close()

    def _serve(self, parts: GalleryParts) -> None:
        warned = False
        while not self.stop.is_set():
            try:
                if not self.loaded.is_set() and not self._first_load(parts.sync):
                    continue  # the matcher changed while it was read: read again
                self.jobs.run_pending(parts)
                if self._status_wanted.is_set():
                    self._status_wanted.clear()
                    if self.link is not None:
                        self.link.publish_status(self.status.status(parts.store))
                if not warned:
                    warned = True
                    stale = parts.store.count_needing_reenrollment(parts.sync.model_id)
                    if stale:
                        log.warning(
                            "%d enrolled people have no %s template and need re-enrollment (`faceagent gallery "
                            "rebuild` makes them from kept chips)",
                            stale,
                            parts.sync.model_id,
                        )
                if parts.sync.maybe_sync():  # an erasure or a rename by another process
                    self.on_synced()
                parts.retention.maybe_purge()
                parts.store.finish_erasures()  # a CLI erasure's or a busy one's WAL truncation
                self.each_turn(parts.store)
            except Exception as exc:
                if not self.loaded.is_set():  # the agent does not run without its gallery
                    self._fail(exc)
                    break
                log.exception("gallery thread: this turn failed; the next one tries again")
            if not self._status_wanted.is_set():
                self.jobs.wait(TICK_SECONDS)

    def _first_load(self, sync: GallerySync) -> bool:
        started = time.monotonic()
        if not sync.reload():
            return False
        self.loaded.set()
        log.info("gallery loaded: %d templates in %.2f s", len(self.matcher), time.monotonic() - started)
        return True

    def _fail(self, exc: BaseException) -> None:
        log.error("could not load the gallery: %s", exc)
        self.on_failure(exc)


def _set_retention(keeper: RetentionKeeper, settings: RetentionSettings) -> None:
    keeper.settings = settings
