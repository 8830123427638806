"""First-boot provisioning on real directories standing in for /boot/firmware, /etc/faceagent and /var/lib."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signing import KeyRoles, key_id, public_key_text
from agent.config import load_settings
from agent.service.provisioning import (
    FILE_NAME,
    REASON_NAME,
    REJECTED_NAME,
    STAGING_NAME,
    Outcome,
    ProvisioningResult,
    main,
    provision,
    read_status,
    wipe,
)
from tests.support.broker import Certs

GOOD = """
[mqtt]
url = "mqtts://broker.example.com"
device_id = "door-1"
username = "door-1"
password = "s3cret-Pa55"

[events]
camera_id = "front-door"
"""


@dataclass
class Device:
    boot: Path
    etc: Path
    state: Path

    def drop(self, text: str, name: str = FILE_NAME) -> Path:
        path = self.boot / name
        path.write_text(text)
        return path

    def provision(self, owner: tuple[int, int] | None = None) -> ProvisioningResult:
        return provision(self.boot, self.etc, self.state, owner=owner)

    @property
    def config(self) -> Path:
        return self.etc / FILE_NAME


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device(tmp_path / "boot", tmp_path / "etc" / "faceagent", tmp_path / "var" / "faceagent")
    dev.boot.mkdir()
    return dev


@pytest.fixture
def existing(device: Device) -> bytes:
    """A configuration already in place, which a rejected file must leave as it is."""
    device.etc.mkdir(parents=True)
    content = b'[events]\ncamera_id = "old"\n'
    device.config.write_bytes(content)
    return content


def recorded(device: Device) -> dict[str, Any]:
    status = read_status(device.state)
    assert status is not None
    return status


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tls_file(key: str = "client.key") -> str:
    lines = '[mqtt]\nurl = "mqtts://broker.example.com"\nca_file = "ca.crt"\n'
    return lines + f'cert_file = "client.crt"\nkey_file = "{key}"\n'


def copy_certs(certs: Certs, boot: Path, *names: str) -> None:
    for name in names:
        (boot / name).write_bytes((certs.ca.parent / name).read_bytes())


# ---------------------------------------------------------------------------------------- nothing to do


def test_no_file_is_none(device: Device) -> None:
    assert device.provision().outcome is Outcome.NONE
    assert recorded(device)["outcome"] == "none"
    assert not device.config.exists()


def test_none_keeps_the_last_recorded_outcome(device: Device) -> None:
    device.drop(GOOD)
    device.provision()
    device.provision()
    assert recorded(device)["outcome"] == "applied"


# ---------------------------------------------------------------------------------------- applied


def test_a_good_file_becomes_the_configuration(device: Device, existing: bytes) -> None:
    device.drop(GOOD)
    result = device.provision()
    settings = load_settings(device.config)
    assert result.outcome is Outcome.APPLIED
    assert (settings.mqtt.device_id, settings.mqtt.password, settings.events.camera_id) == (
        "door-1",
        "s3cret-Pa55",
        "front-door",
    )


def test_the_configuration_is_private(device: Device) -> None:
    device.drop(GOOD)
    device.provision()
    assert mode(device.config) == 0o600


def test_the_boot_partition_keeps_no_secret(device: Device) -> None:
    device.drop(GOOD)
    device.provision()
    assert list(device.boot.iterdir()) == []


def test_the_outcome_is_recorded_for_the_status_report(device: Device) -> None:
    device.drop(GOOD)
    device.provision()
    status = read_status(device.state)
    assert status is not None
    assert (status["outcome"], status["files"], status["reason"]) == ("applied", [FILE_NAME], None)
    assert mode(device.state / "provisioning.json") == 0o600


def test_certificate_files_next_to_it_are_moved_in_privately(device: Device, certs: Certs) -> None:
    copy_certs(certs, device.boot, "ca.crt", "client.crt", "client.key")
    device.drop(tls_file())
    result = device.provision()
    mqtt = load_settings(device.config).mqtt
    assert result.outcome is Outcome.APPLIED, result.reason
    assert (mqtt.ca_file, mqtt.cert_file, mqtt.key_file) == tuple(
        device.etc / n for n in ("ca.crt", "client.crt", "client.key")
    )
    assert all(mode(device.etc / n) == 0o600 for n in ("ca.crt", "client.crt", "client.key"))
    assert list(device.boot.iterdir()) == []


def test_inline_pem_files_are_written(device: Device, certs: Certs) -> None:
    pem = certs.ca.read_text()
    device.drop(f'[mqtt]\nca_file = "ca.crt"\n\n[provisioning.files]\n"ca.crt" = """\n{pem}"""\n')
    result = device.provision()
    assert result.outcome is Outcome.APPLIED, result.reason
    assert (device.etc / "ca.crt").read_text().strip() == pem.strip()
    assert load_settings(device.config).mqtt.ca_file == device.etc / "ca.crt"


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_an_absolute_boot_path_in_a_list_is_rewritten_absolute(device: Device) -> None:
    (device.boot / "ops.pem").write_bytes(public_pem(Ed25519PrivateKey.generate()))
    device.drop(f'[commands]\npublic_keys = ["{device.boot / "ops.pem"}"]\n')
    device.provision()
    assert load_settings(device.config).commands.public_keys == (str(device.etc / "ops.pem"),)


def test_a_command_key_in_a_pem_file_next_to_the_boot_file_is_trusted_after_provisioning(device: Device) -> None:
    key = Ed25519PrivateKey.generate()
    (device.boot / "ops.pem").write_bytes(public_pem(key))
    device.drop(f'[commands]\npublic_keys = ["{device.boot / "ops.pem"}"]\n')
    assert device.provision().outcome is Outcome.APPLIED
    assert set(KeyRoles.from_settings(load_settings(device.config)).commands) == {key_id(key.public_key())}


def test_inline_base64_command_and_release_keys_are_trusted_after_provisioning(device: Device) -> None:
    command, release = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    device.drop(
        f'[commands]\npublic_keys = ["{public_key_text(command)}"]\n'
        f'[models]\nrelease_keys = ["{public_key_text(release)}"]\n'
    )
    assert device.provision().outcome is Outcome.APPLIED
    roles = KeyRoles.from_settings(load_settings(device.config))
    assert (set(roles.commands), set(roles.releases)) == (
        {key_id(command.public_key())},
        {key_id(release.public_key())},
    )


def test_a_key_that_does_not_load_is_rejected(device: Device, certs: Certs) -> None:
    copy_certs(certs, device.boot, "ca.crt")  # a certificate, not a public key: the agent could not load it
    device.drop(f'[commands]\npublic_keys = ["{device.boot / "ca.crt"}"]\n')
    result = device.provision()
    assert result.outcome is Outcome.REJECTED and "commands.public_keys[0]" in (result.reason or "")
    assert not device.config.exists()


def test_one_key_given_both_roles_is_rejected(device: Device) -> None:
    key = public_key_text(Ed25519PrivateKey.generate())
    device.drop(f'[commands]\npublic_keys = ["{key}"]\n[models]\nrelease_keys = ["{key}"]\n')
    result = device.provision()
    assert result.outcome is Outcome.REJECTED and "one role" in (result.reason or "")


def test_applying_twice_changes_nothing_the_second_time(device: Device) -> None:
    device.drop(GOOD)
    device.provision()
    before = device.config.stat().st_mtime_ns, device.config.read_bytes()
    assert device.provision().outcome is Outcome.NONE
    assert (device.config.stat().st_mtime_ns, device.config.read_bytes()) == before


def test_a_staging_folder_left_by_a_crash_is_cleared(device: Device) -> None:
    (device.etc / STAGING_NAME).mkdir(parents=True)
    (device.etc / STAGING_NAME / FILE_NAME).write_text("half")
    device.drop(GOOD)
    assert device.provision().outcome is Outcome.APPLIED
    assert not (device.etc / STAGING_NAME).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_installed_files_belong_to_the_service_user(device: Device) -> None:
    device.drop(GOOD)
    device.provision(owner=(65534, 65534))
    assert (device.config.stat().st_uid, (device.state / "provisioning.json").stat().st_uid) == (65534, 65534)


# ---------------------------------------------------------------------------------------- rejected


def test_invalid_toml_is_set_aside_with_the_reason(device: Device) -> None:
    device.drop("[mqtt\nurl = ")
    result = device.provision()
    assert result.outcome is Outcome.REJECTED
    assert (device.boot / REJECTED_NAME).read_text() == "[mqtt\nurl = "
    assert "not valid TOML" in (device.boot / REASON_NAME).read_text()
    assert not (device.boot / FILE_NAME).exists()


def test_a_bad_key_leaves_the_existing_configuration_untouched(device: Device, existing: bytes) -> None:
    device.drop(GOOD + "\n[gallery]\nthreshold = 7\n")
    before = device.config.stat().st_mtime_ns
    assert device.provision().outcome is Outcome.REJECTED
    assert (device.config.read_bytes(), device.config.stat().st_mtime_ns) == (existing, before)
    assert sorted(p.name for p in device.etc.iterdir()) == [FILE_NAME]


def test_the_reason_names_the_bad_key(device: Device) -> None:
    device.drop('[mqtt]\ndevcie_id = "x"\n')
    reason = device.provision().reason or ""
    assert "mqtt.devcie_id: unknown key" in reason
    assert recorded(device)["reason"] == reason


def test_the_reason_never_repeats_a_password(device: Device) -> None:
    device.drop('[mqtt]\nurl = "mqtts://u:hunter22@bad host"\npassword = 12345\n')
    result = device.provision()
    assert result.outcome is Outcome.REJECTED
    recorded = (device.state / "provisioning.json").read_text() + (device.boot / REASON_NAME).read_text()
    assert "hunter22" not in recorded
    assert "12345" not in recorded


def test_a_named_certificate_that_is_missing_is_rejected(device: Device, certs: Certs) -> None:
    copy_certs(certs, device.boot, "ca.crt", "client.crt")  # no client.key
    device.drop(tls_file())
    result = device.provision()
    assert result.outcome is Outcome.REJECTED
    assert "mqtt.key_file: client.key must be a file next to faceagent.toml" in (result.reason or "")
    assert not device.etc.exists() or list(device.etc.iterdir()) == []


def test_a_key_that_does_not_match_the_certificate_is_rejected(device: Device, certs: Certs) -> None:
    copy_certs(certs, device.boot, "ca.crt", "client.crt", "other-server.key")
    device.drop(tls_file(key="other-server.key"))
    result = device.provision()
    assert result.outcome is Outcome.REJECTED
    assert "mqtt.cert_file/key_file: not a certificate with its unencrypted key" in (result.reason or "")
    assert list(device.etc.iterdir()) == []  # staged, checked, cleared: nothing installed


def test_a_certificate_that_is_not_pem_is_rejected(device: Device) -> None:
    (device.boot / "ca.crt").write_bytes(b"\x30\x82\x01\x0a")
    device.drop('[mqtt]\nca_file = "ca.crt"\n')
    assert "must be a PEM file" in (device.provision().reason or "")


def test_an_inline_file_name_cannot_leave_the_folder(device: Device) -> None:
    device.drop('[provisioning.files]\n"../x.pem" = "-----BEGIN CERTIFICATE-----"\n')
    assert "a file name of A-Z" in (device.provision().reason or "")


def test_a_path_into_the_boot_partition_that_is_no_file_is_rejected(device: Device) -> None:
    device.drop('[gallery]\npath = "gallery.db"\n')
    assert "gallery.path: gallery.db must be a file next to" in (device.provision().reason or "")


# ---------------------------------------------------------------------------------------- failed, wipe, CLI


def test_an_install_failure_keeps_the_file_for_the_next_start(device: Device) -> None:
    device.etc.parent.mkdir(parents=True)
    device.etc.write_text("not a folder")
    device.drop(GOOD)
    result = device.provision()
    assert result.outcome is Outcome.FAILED
    assert (device.boot / FILE_NAME).read_text() == GOOD
    assert "s3cret" not in (result.reason or "")


def test_wipe_overwrites_the_bytes_before_unlinking(tmp_path: Path) -> None:
    secret = tmp_path / "key.pem"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----" * 100)
    os.link(secret, tmp_path / "second-name")  # the same inode, so the overwrite is visible after the unlink
    assert wipe(secret) is None
    assert not secret.exists()
    assert (tmp_path / "second-name").read_bytes() == bytes(2700)


def test_main_exit_code_and_json(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    device.drop("not toml at all ===")
    argv = ["--boot-dir", str(device.boot), "--config-dir", str(device.etc), "--state-dir", str(device.state)]
    code = main([*argv, "--json"])
    assert code == 2
    assert json.loads(capsys.readouterr().out)["outcome"] == "rejected"


def test_main_with_nothing_to_do_exits_0(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--boot-dir", str(device.boot), "--config-dir", str(device.etc), "--state-dir", str(device.state)]
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_main_reports_a_state_directory_it_cannot_write(device: Device, capsys: pytest.CaptureFixture[str]) -> None:
    device.state.parent.mkdir(parents=True)
    device.state.write_text("a file, not a folder")
    argv = ["--boot-dir", str(device.boot), "--config-dir", str(device.etc), "--state-dir", str(device.state)]
    assert main(argv) == 1
    assert "faceagent: provision:" in capsys.readouterr().err
