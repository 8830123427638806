"""First-boot provisioning: a `faceagent.toml` dropped on the boot partition becomes the device's configuration.

Imaging tools can write only the FAT boot partition, so that is where a freshly flashed device finds its
identity and secrets (device id, broker URL, credentials, certificates) before first boot. At every start
(the unit's `ExecStartPre`) the file is validated completely, staged beside the configuration, swapped in by
rename, and only then wiped from the boot partition: a crash in between leaves the boot file in place and the
next start applies it again. A bad file is renamed `faceagent.toml.rejected` with the reason beside it and
nothing of it is applied. The outcome lands in `provisioning.json` in the state directory for the status report.

The file is an ordinary settings file (validated by `agent.config`). Certificate and key paths in it may name
PEM files next to it, or entries of an optional `[provisioning.files]` table of inline PEM text:

    [mqtt]
    url = "mqtts://door-1:secret@broker.example.com"
    device_id = "door-1"
    ca_file = "ca.pem"                 # ca.pem next to faceagent.toml, or inline:
    [provisioning.files]
    "ca.pem" = "-----BEGIN CERTIFICATE-----\\n..."

Operator keys travel the same way: `[commands] public_keys` (and `[models] release_keys`) entries are base64
public keys written inline, or absolute paths of PEM files next to the file (`/boot/firmware/ops.pem`, or a
`[provisioning.files]` entry of that name), installed beside the configuration. Every key must load, as the
agent will load it, or the file is rejected: a device that could not check signatures would refuse every
state-changing command.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pwd
import re
import shutil
import ssl
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from agent.config import (
    DEFAULT_CONFIG,
    SECRET_KEYS,
    Settings,
    load_settings,
    redact_url,
    settings_from_dict,
    url_userinfo,
)
from agent.errors import ConfigError
from agent.files import fsync_dir
from agent.identity import utc_now

BOOT_DIR = Path("/boot/firmware")  # Raspberry Pi OS Bookworm; /boot before it
CONFIG_DIR = DEFAULT_CONFIG.parent
STATE_DIR = Path("/var/lib/faceagent")
FILE_NAME = DEFAULT_CONFIG.name
REJECTED_NAME = FILE_NAME + ".rejected"
REASON_NAME = REJECTED_NAME + ".reason"
STATUS_NAME = "provisioning.json"
STAGING_NAME = ".provisioning"  # inside the configuration directory, so the final renames stay on one filesystem
MAX_FILE_BYTES = 1024 * 1024
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
EXIT_REJECTED = 2
EXIT_FAILED = 1


class Outcome(StrEnum):
    APPLIED = "applied"  # the boot file is now the configuration
    REJECTED = "rejected"  # invalid: kept aside with the reason, the configuration untouched
    FAILED = "failed"  # valid, but could not be installed (disk, permissions): retried at the next start
    NONE = "none"  # no provisioning file


@dataclass(frozen=True)
class ProvisioningResult:
    outcome: Outcome
    reason: str | None = None  # why rejected or failed; secrets redacted
    files: tuple[str, ...] = ()  # installed into the configuration directory
    warnings: tuple[str, ...] = ()  # e.g. the boot partition is read-only, so the secrets stay on it
    at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), **{f.name: getattr(self, f.name) for f in fields(self)[1:]}}


class Rejected(Exception):
    """The provisioning file is invalid; the message says what to fix."""


@dataclass(frozen=True)
class _Plan:
    config_text: str
    files: dict[str, bytes]  # name in the configuration directory -> content
    sources: tuple[Path, ...]  # boot-partition files to wipe once applied


def provision(
    boot_dir: Path, config_dir: Path, state_dir: Path, *, owner: tuple[int, int] | None = None
) -> ProvisioningResult:
    """Apply `boot_dir/faceagent.toml` if there is one; `owner` (uid, gid) gets the installed files."""
    source = boot_dir / FILE_NAME
    if not source.is_file():
        result = ProvisioningResult(Outcome.NONE)
        if read_status(state_dir) is None:  # keep the record of the last real provisioning
            write_status(state_dir, result, owner)
        return result
    secrets: list[str] = []
    data: dict[str, Any] | None = None
    try:
        data = _parse(source)
        secrets = _secret_values(data)
        plan = plan_provisioning(copy.deepcopy(data), source, config_dir)
        files = _install(plan, config_dir, owner)
    except Rejected as exc:
        result = _reject(source, _redact(str(exc), secrets), data, secrets)
    except OSError as exc:
        result = ProvisioningResult(Outcome.FAILED, _redact(f"could not install into {config_dir}: {exc}", secrets))
    else:
        warnings = tuple(w for w in map(wipe, plan.sources) if w)
        result = ProvisioningResult(Outcome.APPLIED, files=files, warnings=warnings)
    write_status(state_dir, result, owner)
    return result


def plan_provisioning(data: dict[str, Any], source: Path, config_dir: Path) -> _Plan:
    """Everything to install from the parsed `source`, checked; Rejected names the problem."""
    boot_dir = source.parent
    inline = _inline_files(data.pop("provisioning", {}))
    files = dict(inline)
    try:
        settings = settings_from_dict(data, source=FILE_NAME, base_dir=boot_dir)
    except ConfigError as exc:
        raise Rejected(str(exc)) from None
    sources = [source]
    for key, path in _paths(settings, data):
        if not _inside(path, boot_dir):
            continue
        next_to = path.parent.resolve() == boot_dir.resolve()
        if next_to and path.name in inline and not path.exists():
            _point_to(data, key, path, config_dir)  # names a [provisioning.files] entry
            continue
        if not next_to or not path.is_file():
            raise Rejected(f"{key}: {path.name} must be a file next to {FILE_NAME} (the boot partition is wiped)")
        if path.name in inline or path.name == FILE_NAME:
            raise Rejected(f"{key}: {path.name} is given twice (inline and as a file)")
        if path not in sources:
            files[path.name] = _read_pem(path, key)
            sources.append(path)
        _point_to(data, key, path, config_dir)
    text = f"# Provisioned from {source} at {utc_now()}; its comments are not kept.\n\n" + _toml(data)
    if tomllib.loads(text) != data:
        raise Rejected("the settings could not be written back faithfully (unsupported value)")
    return _Plan(text, files, tuple(sources))


def _parse(source: Path) -> dict[str, Any]:
    try:
        if source.stat().st_size > MAX_FILE_BYTES:
            raise Rejected(f"larger than {MAX_FILE_BYTES} bytes")
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise Rejected(f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise Rejected(f"unreadable: {exc.strerror}") from None


def _inline_files(table: Any) -> dict[str, bytes]:
    """`[provisioning.files]`: file name -> PEM text, written into the configuration directory."""
    if not isinstance(table, dict) or set(table) - {"files"}:
        raise Rejected('provisioning: the only key allowed is "files", a table of name = "PEM text"')
    inline = table.get("files", {})
    if not isinstance(inline, dict):
        raise Rejected('provisioning.files: must be a table of name = "PEM text"')
    files: dict[str, bytes] = {}
    for name, text in inline.items():
        if not _FILE_NAME_RE.fullmatch(name) or name == FILE_NAME:
            raise Rejected(f'provisioning.files."{name}": a file name of A-Z a-z 0-9 _ . - is needed')
        if not isinstance(text, str) or "-----BEGIN " not in text or len(text) > MAX_FILE_BYTES:
            raise Rejected(f'provisioning.files."{name}": must be PEM text (-----BEGIN ...), at most 1 MiB')
        files[name] = text.encode()
    return files


def _paths(settings: Settings, data: dict[str, Any]) -> list[tuple[str, Path]]:
    """Every path the file sets, resolved: Path-valued keys and path entries of string lists (public keys)."""
    found: list[tuple[str, Path]] = []
    for section, table in data.items():
        for name in table:
            value = getattr(getattr(settings, section), name)
            if isinstance(value, Path):
                found.append((f"{section}.{name}", value))
            elif isinstance(value, tuple):
                found += [(f"{section}.{name}", Path(v)) for v in value if isinstance(v, str) and v.startswith("/")]
    return found


def _point_to(data: dict[str, Any], key: str, path: Path, config_dir: Path) -> None:
    """Make `key` name the file's new home: a bare name for path keys (relative to the configuration file, so
    the staged copy checks out too), an absolute path inside a list (public keys must be absolute)."""
    section, name = key.split(".")
    value = data[section][name]
    if isinstance(value, list):
        data[section][name] = [str(config_dir / path.name) if Path(item) == path else item for item in value]
    else:
        data[section][name] = path.name


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _read_pem(path: Path, key: str) -> bytes:
    content = path.read_bytes()[: MAX_FILE_BYTES + 1]
    if len(content) > MAX_FILE_BYTES or b"-----BEGIN " not in content:
        raise Rejected(f"{key}: {path.name} must be a PEM file (-----BEGIN ...) of at most 1 MiB")
    return content


def _check_tls(settings: Settings) -> None:
    """The broker credentials load the way the MQTT link will load them: a bad or mismatched PEM is rejected now."""
    mqtt = settings.mqtt
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if mqtt.ca_file is not None:
            context.load_verify_locations(cafile=mqtt.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise Rejected(f"mqtt.ca_file: not a usable CA certificate ({exc})") from None
    try:
        if mqtt.cert_file is not None:
            context.load_cert_chain(mqtt.cert_file, mqtt.key_file, password="")  # "": an encrypted key fails
    except (ssl.SSLError, OSError) as exc:
        raise Rejected(f"mqtt.cert_file/key_file: not a certificate with its unencrypted key ({exc})") from None


def _check_keys(settings: Settings, config_dir: Path, staging: Path) -> None:
    """Command and release keys load the way the agent will load them (a key file from its staged copy): a bad
    key is rejected now rather than stopping the agent at its start."""
    from agent.commands.signing import KeyRoles  # only here: provisioning runs before every start

    def staged(entries: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(staging / Path(e).name) if Path(e).parent == config_dir else e for e in entries)

    commands = replace(settings.commands, public_keys=staged(settings.commands.public_keys))
    models = replace(settings.models, release_keys=staged(settings.models.release_keys))
    try:
        KeyRoles.from_settings(replace(settings, commands=commands, models=models))
    except ConfigError as exc:
        raise Rejected(str(exc).replace(str(staging), str(config_dir))) from None


def _install(plan: _Plan, config_dir: Path, owner: tuple[int, int] | None) -> tuple[str, ...]:
    """Stage every file (0600), validate the staged configuration as the agent will load it, then rename in."""
    config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = config_dir / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash
    staging.mkdir(mode=0o700)
    try:
        names = [*plan.files, FILE_NAME]  # the configuration last: it is what makes the rest take effect
        for name in names:
            content = plan.config_text.encode() if name == FILE_NAME else plan.files[name]
            _write_private(staging / name, content, owner)
        try:
            staged = load_settings(staging / FILE_NAME)
        except ConfigError as exc:
            raise Rejected(str(exc)) from None
        _check_tls(staged)
        _check_keys(staged, config_dir, staging)
        for name in names:
            os.replace(staging / name, config_dir / name)
        fsync_dir(config_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tuple(names[-1:] + names[:-1])


def _write_private(path: Path, content: bytes, owner: tuple[int, int] | None) -> None:
    """A new file, 0600, owned by `owner`. Mode and owner are set on the open descriptor, never by path:
    this runs as root inside the service user's state directory, where that user could swap the new file
    for a symlink (to /etc/shadow, say) between the write and a path-based chown or chmod."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(path, flags, 0o600), "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        if owner is not None:
            os.fchown(handle.fileno(), *owner)
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def wipe(path: Path) -> str | None:
    """Overwrite `path` with zeros, sync, unlink; a warning instead of an exception.

    Best effort only: FAT has no secure delete. The zeros usually land on the same clusters, but an SD card
    remaps flash pages (wear levelling), so old sectors can survive in its spare area, and the deleted
    directory entry keeps the name and size. Treat what was on the card as known to whoever held the card.
    """
    try:
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            for start in range(0, size, 65536):
                handle.write(bytes(min(65536, size - start)))
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
        fsync_dir(path.parent)
    except OSError as exc:
        return f"could not remove {path} from the boot partition: {exc.strerror}"
    return None


def _reject(source: Path, reason: str, data: dict[str, Any] | None, secrets: list[str]) -> ProvisioningResult:
    """Set the bad file aside, without its secrets, with the reason next to it, so the next start does not
    try it again: `faceagent.toml.rejected` is a copy with passwords, URL user-info and private keys
    removed, the file itself is wiped, and so are private-key files next to it, as after an applied file."""
    warnings: list[str] = []
    boot_dir = source.parent
    try:
        raw = source.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raw = ""
    keys = _secret_files(boot_dir, data, raw)
    removed = ", ".join(path.name for path in keys)
    note = f"\nPrivate key files next to it were wiped: {removed}; copy them again.\n" if keys else ""
    try:
        _replace_on_boot(source.with_name(REJECTED_NAME), _scrubbed(raw, data, secrets))
        _replace_on_boot(
            source.with_name(REASON_NAME),
            f"{utc_now()} faceagent rejected {FILE_NAME}: nothing of it was applied.\n\n{reason}\n{note}\n"
            f"{REJECTED_NAME} is the file without its secrets (passwords, credentials in URLs, private keys):\n"
            f"fix it, put the secrets back, rename it to {FILE_NAME} and restart the device.\n",
        )
    except OSError as exc:
        warnings.append(f"could not set {source} aside: {exc.strerror}; it will be tried again at the next start")
        return ProvisioningResult(Outcome.REJECTED, reason, warnings=tuple(warnings))
    warnings += [w for w in map(wipe, [source, *keys]) if w]
    return ProvisioningResult(Outcome.REJECTED, reason, warnings=tuple(warnings))


def _replace_on_boot(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


_SECRETISH = r"pas+w|pwd|secret|token|private|credential"  # key names that hold secrets, typos too
_SECRET_NAME = re.compile(_SECRETISH, re.IGNORECASE)
_PRIVATE_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_SECRET_LINE = re.compile(rf"""(?im)^(\s*["']?[\w.-]*(?:{_SECRETISH})[\w.-]*["']?\s*=).*$""")


def _is_secret(section: str, key: str) -> bool:
    return f"{section}.{key}" in SECRET_KEYS or _SECRET_NAME.search(key) is not None


def _scrubbed(raw: str, data: dict[str, Any] | None, secrets: list[str]) -> str:
    """The rejected file without secrets: rewritten from its parsed values when it parses (comments are
    lost, nothing secret can hide in odd quoting), else scrubbed line by line (best effort: a password in
    a multi-line string of a file that is not TOML may survive in part)."""
    header = f"# {FILE_NAME} as rejected at {utc_now()}, its secrets removed (see {REASON_NAME}).\n"
    if data is None:  # no header: the line numbers in the reason must still match
        text = _PRIVATE_PEM.sub(lambda m: "(private key removed)" + "\n" * m.group().count("\n"), raw)
        text = re.sub(r"://[^\n]*@", "://", text)  # user-info, up to the last @ on the line
        return _SECRET_LINE.sub(r'\1 ""  # removed', text)
    clean: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            clean[section] = _scrub_value(table)
            continue
        clean[section] = {k: "" if _is_secret(section, k) else _scrub_value(v) for k, v in table.items()}
    try:
        text = header + "# Its comments are not kept.\n\n" + _toml(clean)
        tomllib.loads(text)
    except (ValueError, TypeError):
        text = header + "# It could not be written back, so none of its settings are kept.\n"
    if any(secret in text for secret in secrets):
        text = header + "# It could not be cleaned safely, so none of its settings are kept.\n"
    return text


def _scrub_value(value: Any) -> Any:
    """URL user-info removed from strings, private keys from PEM text, at any depth."""
    if isinstance(value, str):
        value = _PRIVATE_PEM.sub("(private key removed)", value)
        return redact_url(value).replace("://***@", "://") if url_userinfo(value) is not None else value
    if isinstance(value, list):
        return [_scrub_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_value(item) for key, item in value.items()}
    return value


def _secret_files(boot_dir: Path, data: dict[str, Any] | None, raw: str) -> list[Path]:
    """Files next to the provisioning file that hold a private key and that it names."""
    found: list[Path] = []
    try:
        candidates = sorted(boot_dir.iterdir())
    except OSError:
        return found
    named = set(_strings(data)) if data is not None else None
    for path in candidates:
        if path.name in (FILE_NAME, REJECTED_NAME, REASON_NAME) or path.is_symlink() or not path.is_file():
            continue
        if named is not None:
            mentioned = any(_names(boot_dir / value, path) for value in named if Path(value).name == path.name)
        else:
            mentioned = f'"{path.name}"' in raw or f"'{path.name}'" in raw
        if not mentioned:
            continue
        try:
            with open(path, "rb") as handle:
                head = handle.read(MAX_FILE_BYTES)
        except OSError:
            continue
        if b"PRIVATE KEY-----" in head:
            found.append(path)
    return found


def _names(value: Path, path: Path) -> bool:
    try:
        return value.resolve() == path.resolve()
    except (OSError, ValueError, RuntimeError):  # not a path the filesystem can hold
        return False


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


def _secret_values(data: dict[str, Any]) -> list[str]:
    """The secret values in the file (SECRET_KEYS and keys named like secrets, user-info in any URL, its
    password), so no message repeats them even by accident; shorter than 4 characters they would garble."""
    values: list[str] = []
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if _is_secret(section, key) and isinstance(value, str | int | float):
                values.append(str(value))
    for text in _strings(data):
        userinfo = url_userinfo(text)
        if userinfo:
            password = userinfo.partition(":")[2]
            values += [userinfo, unquote(userinfo), password, unquote(password)]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _toml(data: dict[str, Any]) -> str:
    """Validated settings back as TOML (a round trip is checked: anything else it meets is rejected, not mangled)."""
    lines: list[str] = []
    for section, table in data.items():
        lines += [f"[{section}]", *(f"{key} = {_toml_value(value)}" for key, value in table.items()), ""]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def write_status(state_dir: Path, result: ProvisioningResult, owner: tuple[int, int] | None = None) -> None:
    """`provisioning.json` in the state directory, replaced atomically; the status report includes it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = state_dir / f".{STATUS_NAME}.tmp"
    temporary.unlink(missing_ok=True)
    _write_private(temporary, (json.dumps(result.to_dict(), indent=2) + "\n").encode(), owner)
    os.replace(temporary, state_dir / STATUS_NAME)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last recorded provisioning outcome, or None when nothing was ever recorded (or it is unreadable)."""
    try:
        status = json.loads((state_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


# ------------------------------------------------------------------------------------ command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `faceagent provision`; sets `handler` like the other subcommands."""
    config_dir = Path(os.environ.get("CONFIGURATION_DIRECTORY", CONFIG_DIR))  # set by systemd for the unit
    state_dir = Path(os.environ.get("STATE_DIRECTORY", STATE_DIR))
    parser.add_argument("--boot-dir", type=Path, default=BOOT_DIR, help=f"where {FILE_NAME} is dropped")
    parser.add_argument("--config-dir", type=Path, default=config_dir, help=f"where it goes (default {config_dir})")
    parser.add_argument("--state-dir", type=Path, default=state_dir, help=f"where the outcome goes ({state_dir})")
    parser.add_argument("--owner", help="user that gets the installed files (the service user), e.g. faceagent")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """0: applied or nothing to do; 2: rejected; 1: could not install. The service starts either way."""
    owner = None
    if args.owner:
        try:
            entry = pwd.getpwnam(args.owner)
        except KeyError:
            print(f"faceagent: provision: no user {args.owner!r}", file=sys.stderr)
            return EXIT_FAILED
        owner = (entry.pw_uid, entry.pw_gid)
    try:
        result = provision(args.boot_dir, args.config_dir, args.state_dir, owner=owner)
    except OSError as exc:  # the state directory: the outcome could not be recorded
        print(f"faceagent: provision: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_describe(result, args.boot_dir / FILE_NAME), file=sys.stdout if result.reason is None else sys.stderr)
    for warning in result.warnings:
        print(f"faceagent: provision: warning: {warning}", file=sys.stderr)
    return {Outcome.REJECTED: EXIT_REJECTED, Outcome.FAILED: EXIT_FAILED}.get(result.outcome, 0)


def _describe(result: ProvisioningResult, source: Path) -> str:
    what = {
        Outcome.APPLIED: f"applied {source} ({', '.join(result.files)})",
        Outcome.NONE: f"nothing to do (no {source})",
        Outcome.REJECTED: f"rejected {source}, kept as {REJECTED_NAME}: {result.reason}",
        Outcome.FAILED: f"failed, {source} left for the next start: {result.reason}",
    }[result.outcome]
    return f"faceagent: provision: {what}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceagent provision", description=__doc__.splitlines()[0])
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
