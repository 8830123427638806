"""The console's side of the devices' commands: `faceagent ctl`'s `Operator`, signing with the same key,
one broker connection per operation (as one `ctl` run), so concurrent pages never share a reply inbox.

Also the fleet-wide view of people: each device's `list_people`, merged by `external_ref`, else by name.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.cli.releases import Progress, Release, RollOut, roll_out
from agent.commands.signing import request_signer
from agent.config import RULES, Pattern
from agent.link.mqtt import BrokerSettings
from agent.link.operator import Operator

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PERSON_ID = re.compile(r"p_[0-9a-z]{1,40}")
MAX_PEOPLE_PAGES = 100  # 100,000 people per device at most on one page view


def is_device_id(text: object) -> bool:
    """A device id is one topic level: a wildcard or '/' would address other devices."""
    rule = RULES["mqtt.device_id"]
    return isinstance(text, str) and isinstance(rule, Pattern) and rule.admits(text)


@dataclass(frozen=True)
class Outcome:
    """One device's answer to one command, as a page shows it."""

    ok: bool
    data: dict[str, Any]
    error: str | None
    code: str | None = None

    @classmethod
    def of(cls, reply: dict[str, Any] | None, timeout: float) -> Outcome:
        if reply is None:
            return cls(False, {}, f"no reply within {timeout:g} s (offline, or not listening)", "silent")
        if reply.get("status") == "ok":
            data = reply.get("data")
            return cls(True, data if isinstance(data, dict) else {}, None)
        found = reply.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        return cls(False, {}, str(error.get("message") or "refused"), str(error.get("code") or "error"))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "data": self.data, "error": self.error, "code": self.code}


class Remote:
    """Commands to devices, signed with the operator's key when one is given (as `ctl --sign-key`)."""

    def __init__(self, broker: BrokerSettings, *, timeout: float, sign_key: Ed25519PrivateKey | None) -> None:
        self.broker, self.timeout, self.sign_key = broker, timeout, sign_key

    def _operator(self) -> Operator:
        signer = request_signer(self.sign_key) if self.sign_key is not None else None
        return Operator(self.broker, timeout=self.timeout, signer=signer)

    def call(
        self, devices: Iterable[str], name: str, args: dict[str, Any], *, fleet: Collection[str] = ()
    ) -> dict[str, Outcome]:
        """`name` to every device at once (one request id), each device's outcome. Blocks: run off the loop.
        `fleet`: as `Operator.call`'s, only when `devices` are every online device."""
        targets = list(dict.fromkeys(devices))
        if not targets:
            return {}
        with self._operator() as operator:
            replies = operator.call(targets, name, args, fleet=fleet)
        return {device: Outcome.of(replies.get(device), self.timeout) for device in targets}

    def roll_out(
        self,
        devices: list[str],
        release: Release,
        job_id: str,
        fleet: set[str],
        progress: Progress,
        *,
        chunk_bytes: int,
    ) -> RollOut:
        """A model release on `devices`, exactly as `ctl model-update` sends it. Blocks for the whole job."""
        with self._operator() as operator:
            return roll_out(
                operator, devices, release, job_id=job_id, chunk_bytes=chunk_bytes, fleet=fleet, progress=progress
            )

    def people(self, devices: Iterable[str], *, fleet: Collection[str] = ()) -> dict[str, Outcome]:
        """Every person of every device, page by page; a device whose paging fails is reported, not cut short.
        `fleet`: as `call`'s, for the first page."""
        targets = list(dict.fromkeys(devices))
        if not targets:
            return {}
        with self._operator() as operator:
            first = operator.call(targets, "list_people", {}, fleet=fleet)
            outcomes = {device: Outcome.of(first.get(device), self.timeout) for device in targets}
            for device, outcome in outcomes.items():
                people = list(outcome.data.get("people") or []) if outcome.ok else []
                total = outcome.data.get("total")
                pages = 0
                while outcome.ok and isinstance(total, int) and len(people) < total and pages < MAX_PEOPLE_PAGES:
                    pages += 1
                    page = Outcome.of(operator.call([device], "list_people", {"offset": len(people)})[device], 0)
                    more = page.data.get("people") if page.ok else None
                    if not isinstance(more, list):
                        outcomes[device] = page
                        break
                    if not more:
                        break
                    people += more
                if outcomes[device].ok:
                    outcomes[device] = Outcome(True, outcome.data | {"people": people}, None)
        return outcomes


def merge_people(per_device: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per person across the fleet: the same `external_ref`, else the same name (ignoring case
    and spaces at the ends), is one person; a person shown without a name or reference (a device that keeps
    names to itself) stays one entry of its own. Each entry lists where the person is enrolled, with that
    device's person id, consent record and whether it needs re-enrollment."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for device in sorted(per_device):
        for person in per_device[device]:
            if not isinstance(person, dict) or not isinstance(person.get("id"), str):
                continue
            ref, name = person.get("external_ref"), person.get("name")
            if isinstance(ref, str) and ref:
                key: tuple[str, ...] = ("ref", ref)
            elif isinstance(name, str) and name.strip():
                key = ("name", name.strip().casefold())
            else:
                key = ("id", device, person["id"])
            entry = merged.setdefault(
                key,
                {"key": "/".join(key), "name": name, "external_ref": ref or None, "devices": []},
            )
            entry["name"] = entry["name"] or name
            counts = person.get("templates")
            templates: dict[str, Any] = counts if isinstance(counts, dict) else {}
            entry["devices"].append(
                {
                    "device": device,
                    "person_id": person["id"],
                    "name": name,
                    "consent": person.get("consent"),
                    "created_at": person.get("created_at"),
                    "templates": sum(int(n) for n in templates.values() if isinstance(n, int)),
                    "needs_reenrollment": bool(person.get("needs_reenrollment")),
                }
            )
    people = list(merged.values())
    for entry in people:
        entry["needs_reenrollment_on"] = [d["device"] for d in entry["devices"] if d["needs_reenrollment"]]
    return sorted(people, key=lambda e: (str(e["name"] or "").casefold(), e["key"]))
