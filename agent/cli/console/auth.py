"""Who may use the console: loopback by default; anywhere else only with the operator's password.

The password is kept as an scrypt hash (memory-hard, in the standard library: no native dependency on an
operator's laptop). A login opens a server-side session named by a random cookie (HttpOnly, SameSite=Strict);
every state-changing request must carry the session's CSRF token in `X-CSRF-Token` and, when the browser
sends one, an `Origin` of this console. On loopback without a password every browser gets a session on its
first page, so the CSRF rule holds there too: a web page elsewhere cannot read the token, so it cannot make
the operator's browser sign a command. The `Host` header is checked on loopback against DNS rebinding
(a hostile name resolved to 127.0.0.1 would otherwise reach the console as same-origin).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ConfigError
from agent.files import FileRefused, read_regular_file

# scrypt at N=2^15, r=8: 32 MiB and about 0.1 s per guess on a laptop core (RFC 7914's interactive figures).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
SESSION_COOKIE = "faceagent_console"
SESSION_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 5
MAX_SESSIONS = 1000  # the oldest goes first: a client that never keeps cookies cannot grow the table
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64), the line `faceagent console --hash-password` prints."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"the console password must be at least {MIN_PASSWORD_LENGTH} characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32
    )
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encoded[0]}${encoded[1]}"


@dataclass(frozen=True)
class PasswordHash:
    """A parsed hash line; `matches` recomputes it with the line's own parameters."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, line: str) -> PasswordHash:
        parts = line.strip().split("$")
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError("not an scrypt line")
            n, r, p = (int(x) for x in parts[1:4])
            salt, digest = (base64.b64decode(x, validate=True) for x in parts[4:6])
        except ValueError:
            raise ConfigError("the password hash is not a line made by `faceagent console --hash-password`") from None
        if not (2**14 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4 and len(digest) >= 16):
            raise ConfigError("the password hash has parameters out of range: make it again with --hash-password")
        return cls(n, r, p, salt, digest)

    @classmethod
    def read(cls, path: Path) -> PasswordHash:
        try:
            return cls.parse(read_regular_file(path, 4096).decode("ascii", "replace"))
        except FileRefused as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def matches(self, password: str) -> bool:
        memory = max(_SCRYPT_MAXMEM, 129 * self.r * self.n * self.p)
        attempt = hashlib.scrypt(
            password.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p, maxmem=memory, dklen=len(self.digest)
        )
        return hmac.compare_digest(attempt, self.digest)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only binds allowed without a password."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Session:
    csrf: str
    expires: float
    authenticated: bool


@dataclass
class Sessions:
    """Server-side sessions; the cookie is only a random name for one. `password` None: loopback, open."""

    password: PasswordHash | None
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: list[float] = field(default_factory=list)

    @property
    def needs_login(self) -> bool:
        return self.password is not None

    def get(self, token: str | None) -> Session | None:
        session = self._sessions.get(token or "")
        if session is None:
            return None
        if session.expires < self.clock():
            self._sessions.pop(token or "", None)
            return None
        return session

    def open(self, *, authenticated: bool) -> tuple[str, Session]:
        """A new session under a new token (a login never keeps the token it came with)."""
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        token = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), self.clock() + SESSION_SECONDS, authenticated)
        self._sessions[token] = session
        return token, session

    def close(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)

    def allowed(self, session: Session | None) -> bool:
        """Whether this session may see pages and act: any session on an open console, else a logged-in one."""
        return session is not None and (session.authenticated or not self.needs_login)

    def check_password(self, password: str) -> bool:
        """The password's verdict, or False without trying once too many failures came in the last minute."""
        now = self.clock()
        self._failures = [at for at in self._failures if now - at < 60]
        if self.password is None or len(self._failures) >= LOGIN_FAILURES_PER_MINUTE:
            return False
        if self.password.matches(password):
            return True
        self._failures.append(now)
        return False

    def throttled(self) -> bool:
        now = self.clock()
        return sum(1 for at in self._failures if now - at < 60) >= LOGIN_FAILURES_PER_MINUTE


def csrf_matches(session: Session | None, token: str | None) -> bool:
    return session is not None and token is not None and hmac.compare_digest(session.csrf, token)
