"""The host's pip settings written as ROOT/etc/pip.conf for a Debian tree the checks install into.

Used by scripts/arm64_check.sh and scripts/boot_check.sh (not run on a device). The same index URLs, trusted
hosts, timeouts, proxy and CA bundle as the host, so the tree reaches exactly the registries the host does.
Host-local wheel folders and file:// indexes: `--local bind` keeps them and prints `bind PATH` lines for the
caller to bind read-only at the same paths (an x86-64 container can use them); `--local drop` leaves them out
(they hold x86-64 files: an arm64 tree gets its packages from the index, as a Pi does).

    python3 scripts/_pip_for_rootfs.py ROOT CA_INSIDE --local bind|drop
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

URL_KEYS = ("index-url", "extra-index-url", "find-links")
CARRIED = (
    "trusted-host", "proxy", "timeout", "default-timeout", "retries", "index", "no-index",
    "disable-pip-version-check", "progress-bar", "prefer-binary", "only-binary", "no-binary",
)  # fmt: skip
HOST_ONLY = ("constraint", "requirement", "client-cert", "config-file", "cache-dir", "src", "target", "prefix")


def host_settings() -> dict[str, str]:
    """What pip on this host would use: its config files in pip's order, then PIP_* variables."""
    home = Path.home()
    files = [
        Path("/etc/xdg/pip/pip.conf"),
        Path("/etc/pip.conf"),
        home / ".pip/pip.conf",
        home / ".config/pip/pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    settings: dict[str, str] = {}
    for file in files:
        if file.is_file():
            parser = configparser.ConfigParser()
            parser.read(file)
            for section in ("global", "install"):
                if parser.has_section(section):
                    settings.update(parser.items(section))
    for name, value in os.environ.items():
        if name.startswith("PIP_"):
            settings[name[4:].lower().replace("_", "-")] = value
    return settings


def local_path(url: str) -> str | None:
    if url.startswith("file:"):
        return urlparse(url).path
    return url if url.startswith(("/", ".")) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("ca_inside")
    parser.add_argument("--local", choices=("bind", "drop"), required=True)
    args = parser.parse_args()
    settings = host_settings()
    ca = settings.pop("cert", None) or "/etc/ssl/certs/ca-certificates.crt"
    target = args.root / args.ca_inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, target)
    out, binds, dropped = {"cert": args.ca_inside}, set(), []
    for key, value in settings.items():
        if key in URL_KEYS:
            urls = value.split()
            if args.local == "drop":
                dropped += [f"{key} {url}" for url in urls if local_path(url)]
                urls = [url for url in urls if not local_path(url)]
            for url in urls:
                path = local_path(url)
                if path and Path(path).is_dir():  # an index's pages link to files beside it (../files/): its parent
                    binds.add(str(Path(path) if key == "find-links" else Path(path).parent))
            if urls:
                out[key] = "\n    ".join(urls)
        elif key in HOST_ONLY:
            dropped.append(f"{key} {value}")
        elif key in CARRIED:
            out[key] = value
    (args.root / "etc/pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in out.items()))
    extra = f", extra: {' '.join(out['extra-index-url'].split())}" if "extra-index-url" in out else ""
    print(f"pip: index {out.get('index-url', 'PyPI (pip default)')}{extra}; CA bundle {ca} -> {args.ca_inside}")
    for path in sorted(binds):
        print(f"bind {path}")
        print(f"pip: local package folder {path} bound read-only")
    for item in dropped:
        print(f"pip: not carried over (host-local files on this disk): {item}")


if __name__ == "__main__":
    main()
