"""Store-and-forward: events leave the SQLite outbox only when the broker has acknowledged them.

paho keeps its session in memory only, so a crash, a power cut or a long broker outage would lose
whatever it held. The outbox table is the durable queue instead: this thread publishes the oldest
pending events with QoS 1, remembers which message id carries which event, and deletes an event only
when its PUBACK arrives. Order holds because events go out oldest first and, after a reconnect, nothing
new is sent until paho has re-sent (and the broker acknowledged) what was in flight before it. A crash
between PUBACK and delete re-sends the event after restart: consumers drop the duplicate by `event_id`.

The outbox is bounded: beyond `max_events` the oldest unsent events are deleted and counted as dropped
(telemetry reports the count, and a warning says so at most once a minute). `person_erased` events are
never dropped: they are the only word consumers downstream get of an erasure.

A full file system refuses even deletes (in WAL mode a delete appends pages to the -wal file). The
outbox then keeps publishing what it holds: acknowledged events wait in memory to be deleted and are
never sent again meanwhile, and the delete is retried every cycle until space returns. Should the
agent stop before that, they are sent again after the restart: duplicates, never losses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from agent.gallery.store import GalleryStore
from agent.link.mqtt import MqttLink
from agent.storage import StorageFullError, StorageHealth
from agent.wire import PERSON_ERASED, encode

log = logging.getLogger(__name__)
_DROP_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # events in the outbox, in flight included
    inflight: int  # published, PUBACK not yet seen
    published: int  # acknowledged by the broker and deleted, since start
    dropped: int  # deleted unsent because the outbox was full, since start


@dataclass(frozen=True)
class _InFlight:
    event_id: str
    epoch: int  # the link's connection epoch when it was handed to paho
    sent_at: float


class OutboxPublisher:
    """Runs on its own thread with its own store connection (a store is never shared between threads)."""

    def __init__(
        self,
        store_path: Path,
        link: MqttLink,
        *,
        max_events: int,
        batch: int = 50,
        poll_seconds: float = 1.0,
        ack_timeout: float = 30.0,
        storage: StorageHealth | None = None,
    ) -> None:
        self.store_path = Path(store_path)
        self.link = link
        self.storage = storage  # where a delete refused for lack of space is reported
        self.max_events = max_events
        self.batch = batch  # events awaiting PUBACK at most
        self.poll_seconds = poll_seconds  # events written by another process are found this often
        self.ack_timeout = ack_timeout  # connected this long without a PUBACK: send again from the oldest
        self._inflight: dict[int, _InFlight] = {}
        self._acked: deque[int] = deque()
        self._settled: list[str] = []  # acknowledged, not yet deleted (the delete failed)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch_seen = (0, 0.0)  # (epoch, when this thread first saw it)
        self._depth = self._published = self._dropped = self._cycles = 0
        self._last_drop_log = -_DROP_LOG_INTERVAL
        self._failing = False
        link.on_acked = self._on_acked
        link.add_connect_hook(self.notify)

    # ------------------------------------------------------------------------------------- control

    def start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout: float) -> None:
        """Give in-flight and pending events up to `flush_timeout` seconds to be acknowledged, then stop."""
        deadline = time.monotonic() + flush_timeout
        while self._thread is not None and self.link.connected and time.monotonic() < deadline:
            cycle = self._cycles
            self.notify()
            while self._cycles == cycle and time.monotonic() < deadline:
                time.sleep(0.01)
            if self._cycles != cycle and self._depth == 0 and not self._inflight:
                break
        if self._depth or self._inflight:  # kept in SQLite: sent after the next start
            log.warning(
                "stopping with %d events unsent (%d awaiting PUBACK; broker %s%s); they go out after the next start",
                self._depth,
                len(self._inflight),
                "connected" if self.link.connected else "not connected",
                ", re-sends from before a reconnect unacknowledged" if self._resending() else "",
            )
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def notify(self) -> None:
        """Wake the thread now: an event was stored, an ack came in, or the link reconnected."""
        self._wake.set()

    @property
    def stats(self) -> OutboxStats:
        return OutboxStats(self._depth, len(self._inflight), self._published, self._dropped)

    def _on_acked(self, mid: int) -> None:
        """On paho's thread: only queue the mid; the store belongs to the outbox thread."""
        self._acked.append(mid)
        self._wake.set()

    # ---------------------------------------------------------------------------------------- thread

    def _run(self) -> None:
        store: GalleryStore | None = None
        while not self._halt.is_set():
            self._wake.clear()
            try:
                if store is None:
                    store = GalleryStore.open(self.store_path)
                self._cycle(store)
                if self._failing:
                    log.info("outbox %s works again", self.store_path)
                    self._failing = False
            except Exception as exc:  # a locked or broken gallery, or a bug: never end the thread
                if not self._failing:
                    log.error("outbox %s: %s; retrying every second", self.store_path, exc)
                    self._failing = True
                if store is not None:
                    store.close()
                    store = None
                self._halt.wait(1.0)
            self._wake.wait(self.poll_seconds)
        if store is not None:
            store.close()

    def _cycle(self, store: GalleryStore) -> None:
        try:
            self._settle(store)
            self._bound(store)
        except StorageFullError as exc:  # publishing goes on; the deletes are retried next cycle
            if self.storage is not None:
                self.storage.write_failed(exc)
        self._depth = max(0, store.count_events() - len(self._settled))
        if self.link.connected and not self._resending():
            self._fill(store)
        self._cycles += 1

    def _settle(self, store: GalleryStore) -> None:
        """Delete every event whose PUBACK came in."""
        while self._acked:
            entry = self._inflight.pop(self._acked.popleft(), None)
            if entry is not None:  # else: a status, telemetry or reply message, or a forgotten resend
                self._settled.append(entry.event_id)
        if self._settled:
            store.delete_events(self._settled)
            self._published += len(self._settled)
            self._settled = []
            if self.storage is not None:
                self.storage.write_succeeded()

    def _bound(self, store: GalleryStore) -> None:
        """Keep at most `max_events`: drop the oldest that are not in flight, and count them."""
        excess = store.count_events() - self.max_events
        if excess <= 0:
            return
        busy = self._busy_ids()
        # Erasure notices are never dropped: they are the only word consumers downstream get of an erasure.
        oldest = store.oldest_event_ids(excess + len(busy), excluding_type=PERSON_ERASED)
        victims = [event_id for event_id in oldest if event_id not in busy][:excess]
        store.delete_events(victims)
        self._dropped += len(victims)
        if self.storage is not None and victims:
            self.storage.write_succeeded()
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.warning(
                "outbox full (max %d): dropped the %d oldest unsent events; %d dropped since start",
                self.max_events,
                len(victims),
                self._dropped,
            )

    def _resending(self) -> bool:
        """True while messages sent before the last reconnect still await their PUBACK.

        paho re-sends them itself, in order; sending newer events meanwhile could overtake them. If the
        acks do not come within `ack_timeout` of connected time, forget them: `_fill` then re-publishes
        from the oldest pending event (a duplicate at worst).
        """
        epoch, now = self.link.connection_epoch, time.monotonic()
        if epoch != self._epoch_seen[0]:
            self._epoch_seen = (epoch, now)
        if not self._inflight:
            return False
        oldest = min(max(entry.sent_at, self._epoch_seen[1]) for entry in self._inflight.values())
        if now - oldest > self.ack_timeout:
            log.warning("%d events unacknowledged for %.0fs; sending them again", len(self._inflight), now - oldest)
            self._inflight.clear()
            return False
        return any(entry.epoch != epoch for entry in self._inflight.values())

    def _fill(self, store: GalleryStore) -> None:
        """Publish the oldest pending events that are not in flight, up to `batch` in flight."""
        room = self.batch - len(self._inflight)
        if room <= 0:
            return
        busy = self._busy_ids()
        epoch = self.link.connection_epoch
        for row in store.pending_events(limit=len(busy) + room):
            if row["id"] in busy:
                continue
            mid = self.link.publish_event(row["type"], _payload(row))
            if mid is None:
                return
            self._inflight[mid] = _InFlight(row["id"], epoch, time.monotonic())
            room -= 1
            if room == 0:
                return

    def _busy_ids(self) -> set[str]:
        return {entry.event_id for entry in self._inflight.values()} | set(self._settled)


def _payload(row: dict) -> bytes:
    """The stored payload with the outbox id as `event_id`, so consumers can drop QoS 1 duplicates."""
    return encode({**row["payload"], "event_id": row["id"]})
