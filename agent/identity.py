"""Small shared types for people, matches and events: no behaviour, no imports of other agent modules."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, sortable by creation time."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_event_id() -> str:
    return new_ulid()


def new_person_id() -> str:
    return "p_" + new_ulid().lower()


def utc_now() -> str:
    """UTC ISO-8601 with millisecond precision and a Z, the only time format the agent writes."""
    return utc_iso(datetime.now(UTC))


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Consent:
    """Who agreed to the enrollment, when, under which reference, for what purpose."""

    given_by: str
    given_at: str  # UTC ISO-8601
    reference: str | None = None
    purpose: str | None = None


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    external_ref: str | None
    consent: Consent | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Match:
    """The best gallery person for an embedding. `accepted` = distance < threshold and margin >= required."""

    person_id: str | None
    name: str | None
    distance: float
    margin: float  # distance to the second-best person minus distance to the best (inf when only one person)
    accepted: bool
