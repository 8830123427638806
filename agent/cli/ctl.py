"""`faceagent ctl`: the operator's side of the MQTT link, over the same broker the devices use.

Each subcommand is one request to one device or to a fleet (`--device`, repeatable, or `--all` online
devices; `delete` defaults to every online device). With `--all`, the devices that take requests published
once for the whole fleet (their status says `fleet_commands`, and a fleet-wide ping confirms it) share one
signed copy, so a request's photos cross the broker once, not once per device; named devices each get their
own. `ctl` waits for every addressed device up to `--timeout` and says which did not answer. Exit status: 0 all
answered ok, 1 a device refused, failed, was offline or stayed silent, 2 a local problem (no broker, unreadable
photo, bad key).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.arguments import add_person_arguments
from agent.commands.schema import (
    AUDIT_PAGE,
    COMMAND_NAME,
    MAX_AUDIT_PAGE,
    MAX_CAPTURE_VIEWS,
    MODEL_CHUNK_BYTES,
    VERSION,
    CommandError,
    Image,
)
from agent.config import RULES, CommandSettings, Pattern, find_config, load_settings, require_tls
from agent.errors import FaceagentError
from agent.files import FileRefused, read_regular_file
from agent.identity import new_ulid
from agent.link.client import BrokerSettings
from agent.link.operator import Operator
from agent.wire import FACE_RECOGNIZED, Command

if TYPE_CHECKING:
    from agent.cli.releases import Release

EXIT_REMOTE = 1
MAX_TIMEOUT_SECONDS = 86400.0
MAX_TAIL_SECONDS = 10 * 365 * 86400.0  # what `events` waits with no --seconds


class CtlError(FaceagentError):
    """`ctl` cannot proceed: unusable input (a photo, a key, arguments), or no device to address."""


# ------------------------------------------------------------------------------------ arguments
# Device ids, command names and event types become MQTT topic levels: a wildcard or a '/' in one would
# address other devices or make paho raise, so each is checked as argparse reads it (exit 2, one line).


def _is_topic_level(text: str) -> bool:
    rule = RULES["mqtt.device_id"]
    return isinstance(rule, Pattern) and rule.admits(text)


def _device_id(text: str) -> str:
    if not _is_topic_level(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a device id (1-64 of A-Z a-z 0-9 _ -)")
    return text


def _device_filter(text: str) -> str:
    return text if text == "+" else _device_id(text)


def _event_type(text: str) -> str:
    if text in ("+", "#") or _is_topic_level(text):  # event types are such topic levels too
        return text
    raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an event type (1-64 of A-Z a-z 0-9 _ -, or #)")


def _command_name(text: str) -> str:
    if not COMMAND_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a command name (a-z and _, e.g. purge_events)")
    return text


def _release_version(text: str) -> str:
    if not VERSION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a release version (1-4 dotted whole numbers)")
    return text


def _seconds(limit: float) -> Callable[[str], float]:
    """A wait in seconds: positive and finite (nan, inf and 1e300 would end at once, or overflow the clock)."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
        if not 0 < value <= limit:
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {limit:g} seconds, got {text[:40]}")
        return value

    return seconds


def _whole(low: int, high: int) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return whole


def _read_local(path: Path, limit: int, what: str) -> bytes:
    """A file to send: a FIFO or a device would block or never end (see agent.files)."""
    try:
        return read_regular_file(path, limit)
    except FileRefused as exc:
        raise CtlError(f"{path}: {exc} (a device takes at most {limit} bytes for {what})") from exc


# ------------------------------------------------------------------------------------ output


def _object(value: Any) -> dict[str, Any]:
    """A field of a device's document as an object: anything on the broker may publish there."""
    return value if isinstance(value, dict) else {}


def _summary(name: str, data: dict[str, Any]) -> str:
    if name in (Command.ENROLL, Command.IS_PERSON, Command.ENROLL_FROM_EVENT):
        person = data["person"]
        faces = "photos" if name == Command.ENROLL else "views"
        verb = "enrolled" if data["created"] else f"added {faces} to"
        who = f"{person['name']} ({person['id']})" if "name" in person else person["id"]  # events.include_names
        lines = [f"{verb} {who}: {data['templates_added']} new templates"]
        lines += [f"  {p['label']}: refused: {p['reason']}" for p in data[faces] if not p["accepted"]]
        return "\n".join(lines)
    if name == Command.WRONG_PERSON:
        return (
            f"event {data['event_id']}: not {data['person_id']}; negative {data['negative_id']} stored, "
            f"{data['templates_deleted']} templates made from it taken back"
        )
    if name == Command.DELETE_PERSON:
        deleted = data["deleted"]
        return f"deleted {data['person_id']}: {deleted['templates']} templates, {deleted['events']} events"
    if name == Command.LIST_PEOPLE:
        rows = [f"  {p['id']}  {p.get('name', '-')}  ({_template_counts(p)})" for p in data["people"]]
        return "\n".join([f"{len(rows)} people", *rows])
    if name == Command.GET_CONFIG:
        values, in_use = data["settings"], data.get("matching", {})
        lines = []
        for section, keys in values.items():
            for key, value in keys.items():
                used = in_use.get(f"{section}.{key}")  # a matching figure: the one in use and where it came from
                shown = f"{json.dumps(used['value'])}  ({used['source']})" if used else json.dumps(value)
                lines.append(f"  {section}.{key} = {shown}")
        return "\n".join(lines)
    if name == Command.GET_AUDIT:
        lines = [
            f"  {r['seq']}  {r['at']}  {r['actor']}  {r['action']}  {r['target'] or '-'}  "
            + " ".join(f"{k}={json.dumps(v)}" for k, v in r["details"].items())
            for r in data["records"]
        ]
        more = f"older records: --before {data['next_before']}" if data["next_before"] else "no older records"
        return "\n".join([f"{len(lines)} audit records, newest first ({more})", *lines])
    if name == Command.SET_CONFIG:
        return "set " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in data["changed"].items())
    return json.dumps(data, indent=2)


def report(replies: dict[str, dict | None], name: str, timeout: float, as_json: bool) -> int:
    """One block per device; the exit status says whether every device answered ok."""
    status = 0
    for device, reply in replies.items():
        if as_json:
            print(json.dumps({"device": device, "reply": reply}))
        elif reply is None:
            print(f"{device}: no reply within {timeout:g} s (offline, or not listening)")
        elif reply.get("status") == "ok":
            try:
                summary = _summary(name, reply.get("data") or {})
            except (KeyError, TypeError, AttributeError):  # a device of another version: show it as it came
                summary = json.dumps(reply.get("data"), indent=2)
            print(f"{device}: {summary}")
        else:
            error = _object(reply.get("error"))
            print(f"{device}: error ({error.get('code')}): {error.get('message')}")
        if reply is None or reply.get("status") != "ok":
            status = EXIT_REMOTE
    return status


# ------------------------------------------------------------------------------------ commands


def _operator(args: argparse.Namespace) -> Operator:
    settings = load_settings(find_config(getattr(args, "config", None)))
    require_tls(settings.mqtt, args.mqtt)
    signer = None
    if args.sign_key is not None:
        from agent.commands.signing import load_private_key, request_signer

        signer = request_signer(load_private_key(args.sign_key))
    return Operator(BrokerSettings.from_settings(settings.mqtt, args.mqtt), timeout=args.timeout, signer=signer)


@dataclass(frozen=True)
class Targets:
    devices: list[str]
    status: int  # EXIT_REMOTE when some device was skipped as offline
    fleet: frozenset[str] = frozenset()  # devices that share one fleet-wide request (only with --all)


def _targets(args: argparse.Namespace, operator: Operator, everywhere: bool) -> Targets:
    """The devices named, or with --all (or by default for `everywhere`) every online device; of those, the ones
    whose status says they take a request published once for the whole fleet."""
    if args.device and not args.all:
        return Targets(list(dict.fromkeys(args.device)), 0)
    if not (args.all or everywhere):
        raise CtlError("name the devices with --device ID (repeatable), or use --all")
    statuses = operator.statuses()
    offline = sorted(d for d, s in statuses.items() if s.get("state") != "online")
    for device in offline:
        print(f"{device}: offline, skipped (run again when it is online)", file=sys.stderr)
    online = sorted(d for d, s in statuses.items() if s.get("state") == "online")
    if not online:
        raise CtlError("no device is online")
    fleet = frozenset(d for d in online if statuses[d].get("fleet_commands") is True)
    return Targets(online, EXIT_REMOTE if offline else 0, fleet)


def cmd_devices(args: argparse.Namespace) -> int:
    with _operator(args) as operator:
        statuses = operator.statuses()
    for device, status in sorted(statuses.items()):
        if args.json:
            print(json.dumps({"device": device, "status": status}))
            continue
        gallery = _object(status.get("gallery"))
        print(
            f"{device}  {status.get('state', '?')}  version {status.get('version', '?')}  "
            f"{gallery.get('people', '?')} people  since {status.get('at', '?')}"
        )
    if not statuses and not args.json:
        print("no devices have announced themselves on this broker")
    return 0


def cmd_call(args: argparse.Namespace, name: str, arguments: dict[str, Any], everywhere: bool = False) -> int:
    """`name` to one device (a DEVICE argument) or to a fleet (--device/--all)."""
    with _operator(args) as operator:
        single = getattr(args, "target", None)
        targets = Targets([single], 0) if single else _targets(args, operator, everywhere)
        replies = operator.call(targets.devices, name, arguments, fleet=targets.fleet)
    return report(replies, name, args.timeout, args.json) or targets.status


def cmd_people(args: argparse.Namespace) -> int:
    """Every person of one device, page by page (a device older than paging answers with everyone at once)."""
    with _operator(args) as operator:
        reply = operator.call([args.target], Command.LIST_PEOPLE, {})[args.target]
        people = _people_page(reply)
        total = _object(reply.get("data")).get("total") if reply is not None and people is not None else None
        while people is not None and isinstance(total, int) and len(people) < total:
            page = operator.call([args.target], Command.LIST_PEOPLE, {"offset": len(people)})[args.target]
            more = _people_page(page)
            if more is None:  # silent or refused: say so rather than print a partial list as if whole
                reply, people = page, None
            elif not more:  # the gallery shrank meanwhile
                break
            else:
                people += more
        if reply is not None and people is not None:
            reply = reply | {"data": _object(reply.get("data")) | {"people": people, "offset": 0}}
    return report({args.target: reply}, Command.LIST_PEOPLE, args.timeout, args.json)


def _people_page(reply: dict | None) -> list[dict[str, Any]] | None:
    data = _object(reply.get("data")) if isinstance(reply, dict) and reply.get("status") == "ok" else None
    people = data.get("people") if data is not None else None
    return list(people) if isinstance(people, list) else None


def cmd_status(args: argparse.Namespace) -> int:
    with _operator(args) as operator:
        reply = operator.call([args.target], Command.GET_STATUS, {})[args.target]
        retained = operator.statuses(args.target).get(args.target) if reply is None else None
    if reply is None and retained is not None:
        print(f"{args.target}: no reply within {args.timeout:g} s; its last status ({retained.get('state')}):")
        print(json.dumps(retained, indent=None if args.json else 2))
        return EXIT_REMOTE
    return report({args.target: reply}, Command.GET_STATUS, args.timeout, args.json)


def cmd_audit(args: argparse.Namespace) -> int:
    arguments = {"limit": args.limit} | ({"before": args.before} if args.before is not None else {})
    return cmd_call(args, Command.GET_AUDIT, arguments)


def _photos(paths: list[Path], limits: CommandSettings) -> list[dict[str, str]]:
    """The photos as the device takes them, checked here first so a bad file fails before sending."""
    if len(paths) > limits.max_images:
        raise CtlError(f"{len(paths)} photos: a device takes at most {limits.max_images} per command")
    images = []
    for path in paths:
        encoded = base64.b64encode(_read_local(path, limits.max_image_bytes, "a photo")).decode()
        try:
            Image(limits.max_image_bytes).check(encoded, str(path))
        except CommandError as exc:
            raise CtlError(exc.message) from None
        images.append({"data": encoded, "label": path.name[:100]})
    total = sum(len(image["data"]) for image in images)
    if total > limits.max_payload_bytes - 4096:
        raise CtlError(f"the photos make {total} bytes of base64, over {limits.max_payload_bytes}: send fewer")
    return images


def cmd_enroll(args: argparse.Namespace) -> int:
    settings = load_settings(find_config(getattr(args, "config", None)))
    if args.from_camera:
        if args.photos or args.force:
            raise CtlError("--from-camera takes no photos and no --force: the device captures the views itself")
        if not args.consent_ref:
            raise CtlError("--from-camera needs --consent-ref: the reference of the person's consent record")
        if len(args.device) != 1 or args.all:
            raise CtlError("--from-camera enrolls in front of one device: name it with one --device")
        camera = {"seconds": args.seconds, "views": args.views}
        arguments: dict[str, Any] = {"from_camera": {k: v for k, v in camera.items() if v is not None}}
    elif not args.photos:
        raise CtlError("give the photos to enroll, or --from-camera to enroll in front of the device's camera")
    else:
        arguments = {"images": _photos(args.photos, settings.commands)}
    arguments |= {"name": args.name} if args.name else {"person_id": args.person_id}
    if args.external_ref:
        arguments["external_ref"] = args.external_ref
    if args.consent_ref:
        consent = {"reference": args.consent_ref, "given_by": args.consent_by, "purpose": args.purpose}
        arguments["consent"] = {k: v for k, v in consent.items() if v}
    if args.force:
        arguments["force"] = True
    if args.from_camera:
        return _enroll_from_camera(args, arguments)
    return cmd_call(args, Command.ENROLL, arguments)


CAPTURE_POLL_SECONDS = 1.0
CAPTURE_SILENCE = 3  # polls in a row without a reply before ctl gives up on the device
CAPTURE_GRACE_SECONDS = 60.0  # after the window: the views are stored, or the device is not doing its part


def _enroll_from_camera(args: argparse.Namespace, arguments: dict[str, Any]) -> int:
    """Arm the capture, print its progress once a second until it ends; Ctrl-C cancels it on the device."""
    (device,) = args.device
    deadline = time.monotonic() + (args.seconds or 20.0) + CAPTURE_GRACE_SECONDS
    with _operator(args) as operator:
        reply = operator.call([device], Command.ENROLL, arguments)[device]
        data = _capture_data(reply)
        if data is None:
            return report({device: reply}, Command.ENROLL, args.timeout, args.json)
        poll = {"from_camera": {"capture_id": data.get("capture_id")}}
        shown, silent = "", 0
        try:
            while data.get("status") == "IN_PROGRESS" and silent < CAPTURE_SILENCE and time.monotonic() < deadline:
                count = f"{data.get('views')} of {data.get('views_needed')} views"
                line = f"{device}: IN_PROGRESS: {count} ({data.get('step')})"
                if line != shown and not args.json:
                    print(f"{line}, {data.get('seconds_left')} s left", flush=True)
                    shown = line
                time.sleep(CAPTURE_POLL_SECONDS)
                reply = operator.call([device], Command.ENROLL, poll)[device]
                silent = silent + 1 if reply is None else 0
                if reply is not None and _capture_data(reply) is None:  # refused: say why
                    return report({device: reply}, Command.ENROLL, args.timeout, args.json)
                data = _capture_data(reply) or data
        except KeyboardInterrupt:
            cancel = {"from_camera": poll["from_camera"] | {"cancel": True}}
            reply = operator.call([device], Command.ENROLL, cancel)[device]
            data = _capture_data(reply) or data
    if args.json:
        print(json.dumps({"device": device, "reply": reply}))
    return _capture_outcome(device, data)


def _capture_data(reply: dict | None) -> dict[str, Any] | None:
    return _object(reply.get("data")) if isinstance(reply, dict) and reply.get("status") == "ok" else None


def _capture_outcome(device: str, data: dict[str, Any]) -> int:
    status = data.get("status")
    if status == "IN_PROGRESS":
        print(f"{device}: no outcome: the device stopped answering, or took too long", file=sys.stderr)
        return EXIT_REMOTE
    if status == "SUCCEEDED":
        person = _object(data.get("person"))
        who = f"{person['name']} ({person.get('id')})" if "name" in person else person.get("id")
        verb = "enrolled" if data.get("created") else "added views to"
        print(f"{device}: SUCCEEDED: {verb} {who} from the camera: {data.get('templates_added')} new templates")
        return 0
    print(f"{device}: {status}: {data.get('reason') or json.dumps(data)}")
    return EXIT_REMOTE


def cmd_correct(args: argparse.Namespace) -> int:
    """A correction of one decision, by the event id `ctl events` shows, on the device that made it."""
    arguments: dict[str, Any] = {"event_id": args.event_id}
    if args.ctl_correct == "wrong-person":
        return cmd_call(args, Command.WRONG_PERSON, arguments)
    if args.force:
        arguments["force"] = True
    if args.ctl_correct == "is-person":
        return cmd_call(args, Command.IS_PERSON, arguments | {"person_id": args.person_id})
    consent = {"reference": args.consent_ref, "given_by": args.consent_by, "purpose": args.purpose}
    arguments |= {"name": args.name, "consent": {k: v for k, v in consent.items() if v}}
    if args.external_ref:
        arguments["external_ref"] = args.external_ref
    return cmd_call(args, Command.ENROLL_FROM_EVENT, arguments)


def cmd_delete(args: argparse.Namespace) -> int:
    who = {"name": args.name} if args.name else {"person_id": args.person_id}
    return cmd_call(args, Command.DELETE_PERSON, who, everywhere=True)


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise CtlError(f"{text!r}: expected section.key=value, e.g. gallery.threshold=0.4")
    try:
        return key.strip(), json.loads(raw)
    except RecursionError:  # json's decoder gives up near a thousand levels, by recursion, not ValueError
        raise CtlError(f"{key.strip()[:40]!r}: the value nests too deeply") from None
    except ValueError:
        return key.strip(), raw  # a bare word is a string


KEY_ROLES = {  # role -> (settings section, key, the ctl option that signs with it)
    "command": ("commands", "public_keys", "--sign-key"),
    "release": ("models", "release_keys", "model-update --model-key"),
}


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.commands.signing import key_id, public_key_text

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        descriptor = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CtlError(f"{args.key_file}: cannot create it: {exc.strerror or exc} (an existing key is kept)") from exc
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    section, setting, option = KEY_ROLES[args.role]
    print(f"{args.role} key written to {args.key_file} (mode 0600); use it with {option}")
    print(f"key id {key_id(key.public_key())}; on each device, in /etc/faceagent/faceagent.toml (or the")
    print("faceagent.toml on the boot partition before first boot), add (to any keys already listed):")
    print(f"[{section}]")
    print(f'{setting} = ["{public_key_text(key)}"]')
    return 0


def _model_outcome(device: str, reply: dict | None) -> bool:
    data = _object((reply or {}).get("data"))
    if data.get("status") == "SUCCEEDED" and data.get("standby") is True:
        print(f"{device}: SUCCEEDED: {data.get('model_id')} version {data.get('version')} installed on standby")
        return True
    if data.get("status") == "SUCCEEDED":
        try:
            carried = data.get("people_carried_over")
            print(
                f"{device}: SUCCEEDED: {data['model_id']} version {data['version']} (sha256 {data['sha256'][:12]}) "
                f"replaces {data['previous']['model_id']}; {data['people_needing_reenrollment']} people need "
                f"re-enrollment, {data['templates_rebuilt']} templates rebuilt from kept chips"
                + (f", {carried} people's templates carried over" if carried else "")
            )
        except (KeyError, TypeError):  # a device of another version: show it as it came
            print(f"{device}: SUCCEEDED: {json.dumps(data)}")
        return True
    if data.get("status") == "FAILED":
        print(f"{device}: FAILED at {data.get('step')}: {data.get('reason')} (the previous model runs on)")
    else:
        print(f"{device}: no outcome: {json.dumps(reply) if reply else 'no reply'}")
    return False


def _release(args: argparse.Namespace) -> Release:
    """The release to ship: a bundle (`ctl model-release`), or the model signed here with --model-key (its entry:
    the one --entry-from's manifest gives it, fields of --entry over it)."""
    from agent.cli.releases import BUNDLE_SUFFIX, Release, manifest_entry, read_bundle
    from agent.commands.signing import load_private_key
    from agent.modelupdate.update import MAX_MODEL_BYTES

    if args.model.name.endswith(BUNDLE_SUFFIX):
        return read_bundle(args.model)
    missing = [
        f"--{name}"
        for name in ("model-key", "model-id", "role", "model-version")
        if not getattr(args, name.replace("-", "_"))
    ]
    if missing:
        raise CtlError(
            f"a model must be signed by a release key: give {', '.join(missing)} (ctl keygen --role release), "
            f"or a release bundle (*{BUNDLE_SUFFIX}, made by ctl model-release)"
        )
    content = _read_local(args.model, MAX_MODEL_BYTES, "a model")
    stated = manifest_entry(args.entry_from, args.model_id, content) if args.entry_from else {}
    meta = {
        "model_id": args.model_id,
        "role": args.role,
        "version": args.model_version,
        "entry": stated | _json_object(args.entry),
        "standby": args.standby,
    }
    return Release.signed(content, load_private_key(args.model_key), file=args.model.name, **meta)


def cmd_model_release(args: argparse.Namespace) -> int:
    """Sign a model as a release bundle beside it, for whoever ships it (ctl model-update, the console)."""
    release = _release(args)
    path = release.write_bundle(args.model.parent)
    print(f"release {release.describe()} signed: {path} (ship it with the model beside it)")
    return 0


def cmd_model_update(args: argparse.Namespace) -> int:
    """Begin, chunks, commit on every device named: one signed release, one job id; with --all, each phase
    crosses the broker once for the devices that take fleet-wide requests."""
    from agent.cli.releases import roll_out

    release = _release(args)
    with _operator(args) as operator:
        targets = _targets(args, operator, everywhere=False)
        job_id = args.job_id or new_ulid()
        outcome = roll_out(
            operator, targets.devices, release, job_id=job_id, chunk_bytes=args.chunk_kib * 1024, fleet=targets.fleet
        )
    for device, reason in outcome.dropped.items():
        print(f"{device}: {reason}; dropped", file=sys.stderr)
    succeeded = [_model_outcome(device, reply) for device, reply in outcome.committed.items()]
    done = succeeded and all(succeeded) and len(succeeded) == len(targets.devices)
    return targets.status if done else EXIT_REMOTE


def add_ctl_commands(commands: argparse._SubParsersAction) -> None:
    """`faceagent ctl ...`, wired into the CLI's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--mqtt", metavar="URL", help="broker: mqtt[s]://[user:password@]host[:port] (or mqtt.url)")
    timeout = _seconds(MAX_TIMEOUT_SECONDS)
    common.add_argument("--timeout", type=timeout, default=15.0, help="seconds to wait for replies (default 15)")
    common.add_argument("--sign-key", type=Path, help="sign commands with this Ed25519 private key (PEM)")
    common.add_argument("--json", action="store_true", help="print one JSON document per device")
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    fleet = argparse.ArgumentParser(add_help=False)
    fleet.add_argument("--device", type=_device_id, action="append", default=[], help="device id (repeatable)")
    fleet.add_argument("--all", action="store_true", help="every device that is online")
    one = argparse.ArgumentParser(add_help=False)
    one.add_argument("target", metavar="DEVICE", type=_device_id, help="device id")

    ctl = commands.add_parser("ctl", help="manage devices over MQTT (the operator's side)")
    sub = ctl.add_subparsers(dest="ctl_command", required=True)
    sub.add_parser("devices", parents=[common], help="devices known to the broker (retained status)").set_defaults(
        handler=cmd_devices
    )
    sub.add_parser("status", parents=[common, one], help="a device's live status").set_defaults(handler=cmd_status)
    people = sub.add_parser("people", parents=[common, one], help="the people enrolled on a device")
    people.set_defaults(handler=cmd_people)

    enroll = sub.add_parser("enroll", parents=[common, fleet], help="enroll a person from photos on devices")
    enroll.add_argument("photos", nargs="*", type=Path)
    enroll.add_argument(
        "--from-camera", action="store_true", help="enroll whoever stands in front of the device's camera instead"
    )
    enroll.add_argument("--seconds", type=_seconds(120), help="how long the camera may take (default 20, at most 120)")
    enroll.add_argument("--views", type=_whole(1, MAX_CAPTURE_VIEWS), help="views to capture (default 5)")
    add_person_arguments(enroll, person_id_help="add photos to this person (ids differ between devices)")
    enroll.set_defaults(handler=cmd_enroll)

    delete = sub.add_parser("delete", parents=[common, fleet], help="erase a person (default: on every device)")
    gone = delete.add_mutually_exclusive_group(required=True)
    gone.add_argument("--name", help="the person's name (refused where two people share it)")
    gone.add_argument("--person-id", help="the person's id on the device")
    delete.set_defaults(handler=cmd_delete)

    audit = sub.add_parser("audit", parents=[common, one], help="a device's audit log, newest first (paged)")
    audit.add_argument("--limit", type=_whole(1, MAX_AUDIT_PAGE), default=AUDIT_PAGE, help="records per page")
    audit.add_argument("--before", type=_whole(1, 2**63 - 1), help="only records older than this seq (paging)")
    audit.set_defaults(handler=cmd_audit)
    _add_correct(sub, common, one)

    config = sub.add_parser("config", help="a device's settings")
    config_sub = config.add_subparsers(dest="ctl_config", required=True)
    get = config_sub.add_parser("get", parents=[common, one], help="effective settings (secrets redacted)")
    get.set_defaults(handler=lambda a: cmd_call(a, Command.GET_CONFIG, {}))
    put = config_sub.add_parser("set", parents=[common, fleet], help="change settable keys; persisted on device")
    put.add_argument("values", nargs="+", metavar="KEY=VALUE", help="e.g. gallery.threshold=0.4")
    put.set_defaults(handler=lambda a: cmd_call(a, Command.SET_CONFIG, {"values": dict(map(_setting, a.values))}))

    events = sub.add_parser("events", parents=[common], help="print events as they happen")
    events.add_argument("--device", type=_device_filter, default="+", help="one device (default: all)")
    events.add_argument("--type", type=_event_type, default="#", help=f"one event type, e.g. {FACE_RECOGNIZED}")
    events.add_argument("--count", type=_whole(1, 2**31), help="stop after this many events")
    events.add_argument("--seconds", type=_seconds(MAX_TAIL_SECONDS), help="stop after this long")
    events.set_defaults(handler=_tail)

    call = sub.add_parser("call", parents=[common, one], help="send any command, e.g. ping, purge_events, restart")
    call.add_argument("command", type=_command_name, help="command name")
    call.add_argument("arguments", nargs="?", default="{}", help="its args as a JSON object")
    call.set_defaults(handler=lambda a: cmd_call(a, a.command, _json_object(a.arguments)))

    release_help = (
        "a .tflite model or a fused definition (.json), signed here with --model-key; or a release bundle "
        "(*.release.json)"
    )
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument("model", type=Path, help=release_help)
    signing.add_argument("--model-id", help="manifest id: an existing one to replace, or a new one")
    signing.add_argument("--role", choices=("embedder", "detector"))
    signing.add_argument(
        "--model-version",
        type=_release_version,
        help="the release's version, signed, above the one installed: dotted whole numbers, e.g. 2026.11.1",
    )
    signing.add_argument("--entry", default="{}", help="manifest fields that change, as a JSON object")
    signing.add_argument(
        "--entry-from",
        type=Path,
        metavar="MANIFEST",
        help="take the entry from this manifest's entry for --model-id (e.g. models/manifest.json; it must name "
        "the file's sha256): a new model's or a fused embedder's whole description",
    )
    signing.add_argument(
        "--standby",
        action="store_true",
        help="install it beside the models in use without making it the role's default (signed): a fused "
        "embedder's member, shipped before the fused release",
    )
    signing.add_argument("--model-key", type=Path, help="release key that signs the model (ctl keygen --role release)")

    release = sub.add_parser(
        "model-release", parents=[signing], help="sign a model as a release bundle beside it (where the release key is)"
    )
    release.set_defaults(handler=cmd_model_release)

    update = sub.add_parser("model-update", parents=[common, fleet, signing], help="install a signed model on devices")
    kib = _whole(1, MODEL_CHUNK_BYTES // 1024)
    update.add_argument("--chunk-kib", type=kib, default=256, help="chunk size in KiB (default 256, at most 1024)")
    update.add_argument("--job-id", help="the job's id (default: a new ULID)")
    update.set_defaults(handler=cmd_model_update)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signed commands or model releases")
    keygen.add_argument("key_file", type=Path, help="where to write the private key (PEM, mode 0600)")
    keygen.add_argument(
        "--role", choices=tuple(KEY_ROLES), default="command", help="command (default) or release (signs models)"
    )
    keygen.set_defaults(handler=cmd_keygen)


def _add_correct(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, one: argparse.ArgumentParser
) -> None:
    """`ctl correct wrong-person | is-person | enroll DEVICE EVENT_ID ...`: within the device's feedback window."""
    correct = sub.add_parser("correct", help="correct a decision by its event id (see ctl events)")
    kinds = correct.add_subparsers(dest="ctl_correct", required=True)
    event = argparse.ArgumentParser(add_help=False)
    event.add_argument("event_id", help="the event's id, as ctl events shows it (last on each line)")
    force = argparse.ArgumentParser(add_help=False)
    force.add_argument("--force", action="store_true", help="add views that match someone else, or not the person")
    wrong = kinds.add_parser(
        "wrong-person", parents=[common, one, event], help="that face was not the person the event named"
    )
    wrong.set_defaults(handler=cmd_correct)
    right = kinds.add_parser("is-person", parents=[common, one, event, force], help="that face was this person")
    right.add_argument("person_id", help="the person's id on the device")
    right.set_defaults(handler=cmd_correct)
    new = kinds.add_parser("enroll", parents=[common, one, event, force], help="enroll that unknown face, with consent")
    new.add_argument("--name", required=True, help="display name of the new person")
    new.add_argument("--consent-ref", required=True, help="reference of the consent record (a form number, a ticket)")
    new.add_argument("--consent-by", help="who gave consent (default: the person)")
    new.add_argument("--purpose", help="purpose the consent covers")
    new.add_argument("--external-ref", help="your reference for the person (e.g. an employee number)")
    new.set_defaults(handler=cmd_correct)


def _tail(args: argparse.Namespace) -> int:
    """Print events as they arrive until `--count` of them or `--seconds` have passed (or Ctrl-C)."""
    with _operator(args) as operator:
        try:
            for shown, event in enumerate(operator.events(args.device, args.type, args.seconds), start=1):
                document = event.document
                if args.json:
                    print(json.dumps({"device": event.device, "type": event.event_type, "event": document}), flush=True)
                else:
                    summary = document.get("name") or document.get("person_id") or ""
                    # The event id last: what `ctl correct` refers to the decision by.
                    line = f"{document.get('at', '?')}  {event.device}  {event.event_type}  {summary}  "
                    line += str(document.get("event_id", ""))
                    print(line.rstrip(), flush=True)
                if args.count is not None and shown >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except RecursionError:  # json's decoder gives up near a thousand levels, by recursion, not ValueError
        raise CtlError("arguments must be a JSON object: it nests too deeply") from None
    except ValueError as exc:
        raise CtlError(f"arguments must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise CtlError("arguments must be a JSON object")
    return value


def _template_counts(person: dict[str, Any]) -> str:
    """ "4 templates", or "4 templates, 1 adaptive" where adaptation (gallery.adapt) made some of them."""
    adaptive = sum(person.get("adaptive_templates", {}).values())
    return f"{sum(person['templates'].values())} templates" + (f", {adaptive} adaptive" if adaptive else "")
