"""The console's web application (Starlette): pages, their JSON, the live event stream and `/metrics`.

Pages are small HTML shells (Jinja2, autoescaped: device ids, names and messages come from the broker and
are never trusted as markup) that one script fills from the JSON routes. Every route that changes a device
is a POST that the `Guard` has checked for a session and its CSRF token; the command then goes out signed
through `Remote`, on a worker thread (paho blocks). An uploaded photo is read into memory, checked,
base64-encoded into the enroll request and dropped: it is never written to disk, never logged, never kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.cli.console.auth import SESSION_COOKIE, SESSION_SECONDS, Session, Sessions, csrf_matches
from agent.cli.console.fleet import FleetEvent, FleetState, utc_text
from agent.cli.console.metrics import registry_for
from agent.cli.console.remote import PERSON_ID, Outcome, Remote, is_device_id, merge_people
from agent.cli.console.rollouts import Rollouts, releases_in
from agent.cli.releases import BUNDLE_SUFFIX, ReleaseError, bundles, read_bundle
from agent.commands.schema import AUDIT_PAGE, EVENT_ID, MAX_CAPTURE_VIEWS, CommandError, Image, Text
from agent.config import CommandSettings

SMALL_BODY_BYTES = 64 * 1024
MAX_ACTIONS = 500
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    """Everything the routes share; built once by `faceagent console`."""

    state: FleetState
    remote: Remote
    sessions: Sessions
    limits: CommandSettings  # the photo limits a device applies (from the operator's settings, as ctl)
    allowed_hosts: frozenset[str] | None  # Host headers accepted; None: any (a password guards the console)
    rollouts: Rollouts  # model updates started here
    releases: Path | None = None  # the folder of release bundles the operator may pick (--releases)
    secure_cookie: bool = False  # the cookie only over https (when the console serves TLS)
    actions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ACTIONS))

    def record(self, request: Request, command: str, outcomes: dict[str, Outcome], what: str) -> None:
        """The console's own log: which of its users asked for what, and each device's answer."""
        client = request.client.host if request.client else "?"
        at = utc_text(self.state.clock())
        for device, outcome in outcomes.items():
            entry = {"at": at, "device": device, "command": command, "what": what, "by": f"console user at {client}"}
            self.actions.appendleft(entry | {"ok": outcome.ok, "error": outcome.error})

    def record_all(self, request: Request, command: str, devices: list[str], what: str) -> None:
        """A request started here whose outcome comes later (a model update): recorded as asked."""
        asked = Outcome(True, {}, None)
        self.record(request, command, dict.fromkeys(devices, asked), what)


# ------------------------------------------------------------------------------------ guard


def _reply(status: int, text: str) -> Response:
    return Response(text + "\n", status, media_type="text/plain", headers=SECURITY_HEADERS)


class Guard:
    """Host check, session, CSRF and login, before any route runs (pure ASGI: server-sent events pass)."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app, self.console = app, console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        sessions, hosts = self.console.sessions, self.console.allowed_hosts
        host = request.headers.get("host", "")
        if hosts is not None and host not in hosts:
            shown = ", ".join(sorted(hosts))
            await _reply(421, f"this console answers to {shown} only (DNS rebinding guard)")(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        if path == "/metrics":
            if sessions.needs_login and not _basic_auth_ok(request, sessions):
                headers = {"WWW-Authenticate": 'Basic realm="faceagent console"'}
                await Response("password required\n", 401, headers=headers)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        token = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(token)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                await _reply(403, "refused: the request came from another site")(scope, receive, send)
                return
            if path != "/login" and not csrf_matches(session, request.headers.get("x-csrf-token")):
                await _reply(403, "refused: missing or wrong CSRF token (reload the page)")(scope, receive, send)
                return
        new_cookie = None
        if session is None and (path == "/login" or not sessions.needs_login) and request.method in ("GET", "HEAD"):
            token, session = sessions.open(authenticated=False)
            new_cookie = token
        if path != "/login" and not sessions.allowed(session):
            if path.startswith("/api/"):
                await _reply(401, "log in first")(scope, receive, send)
            else:
                await RedirectResponse("/login", 303, headers=SECURITY_HEADERS)(scope, receive, send)
            return
        scope.setdefault("state", {})["session"] = session
        scope["state"]["session_token"] = token
        await self.app(scope, receive, _with_cookie(send, new_cookie, self.console.secure_cookie))


def session_cookie(token: str, secure: bool, max_age: int = int(SESSION_SECONDS)) -> str:
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{flags}"


def _with_cookie(send: Send, token: str | None, secure: bool) -> Send:
    if token is None:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).append("set-cookie", session_cookie(token, secure))
        await send(message)

    return sending


def _basic_auth_ok(request: Request, sessions: Sessions) -> bool:
    """Prometheus' basic_auth: any user name, the console's password."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return False
    return sessions.check_password(password)


# ------------------------------------------------------------------------------------ helpers


async def read_body(request: Request, limit: int = SMALL_BODY_BYTES) -> bytes:
    """The request's body, refused past `limit` bytes before it is all read."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the request is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = SMALL_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object."""
    try:
        document = json.loads(await read_body(request, limit))
    except (ValueError, RecursionError):
        raise HTTPException(400, "the request is not JSON") from None
    if not isinstance(document, dict):
        raise HTTPException(400, "the request must be a JSON object")
    return document


def _devices(value: Any, known: list[str]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise HTTPException(400, "choose at least one device")
    if not all(is_device_id(device) for device in value):
        raise HTTPException(400, "a device id is not valid")
    unknown = [device for device in value if device not in known]
    if unknown:
        raise HTTPException(400, f"not a device on this broker: {unknown[0]}")
    return list(dict.fromkeys(value))


def _text(value: Any, where: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise HTTPException(400, f"{where}: required")
        return None
    try:
        return Text().check(value, where)
    except CommandError as exc:
        raise HTTPException(400, exc.message) from None


def _targets(value: Any, known: list[str]) -> list[tuple[str, str]]:
    """[(device, person id)] from `[{"device", "person_id"}]`: ids differ from device to device."""
    if not isinstance(value, list) or not value:
        raise HTTPException(400, "no person chosen")
    targets = []
    for item in value:
        device = item.get("device") if isinstance(item, dict) else None
        person_id = item.get("person_id") if isinstance(item, dict) else None
        if not is_device_id(device) or device not in known:
            raise HTTPException(400, "a target device is not on this broker")
        if not isinstance(person_id, str) or not PERSON_ID.fullmatch(person_id):
            raise HTTPException(400, "a person id is not valid")
        targets.append((device, person_id))
    return targets


def _person_and_consent(body: dict[str, Any]) -> dict[str, Any]:
    """A new person's `name`, optional `external_ref` and the consent record an enrollment requires."""
    given = body.get("consent")
    consent_given: dict[str, Any] = given if isinstance(given, dict) else {}
    consent = {
        "reference": _text(consent_given.get("reference"), "consent reference", required=True),
        "given_by": _text(consent_given.get("given_by"), "consent given by"),
        "purpose": _text(consent_given.get("purpose"), "consent purpose"),
    }
    arguments = {
        "name": _text(body.get("name"), "name", required=True),
        "consent": {key: value for key, value in consent.items() if value},
    }
    if external_ref := _text(body.get("external_ref"), "external reference"):
        arguments["external_ref"] = external_ref
    return arguments


def _outcomes(outcomes: dict[str, Outcome]) -> JSONResponse:
    return JSONResponse({"devices": {device: outcome.to_json() for device, outcome in outcomes.items()}})


def _setting_value(value: Any, key: str) -> str | int | float | bool:
    if isinstance(value, bool | str) or (isinstance(value, int | float) and math.isfinite(value)):
        return value
    raise HTTPException(400, f"{key}: must be text, a number or true/false")


# ------------------------------------------------------------------------------------ the application


def build_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(files("agent.cli.console") / "templates"))
    static = StaticFiles(directory=str(files("agent.cli.console") / "static"))
    state, remote = console.state, console.remote

    def page(name: str, **context: Any) -> Callable[[Request], Awaitable[Response]]:
        async def render(request: Request) -> Response:
            session: Session = request.state.session
            values = {"csrf": session.csrf, "needs_login": console.sessions.needs_login, "page": name}
            values |= {key: value(request) if callable(value) else value for key, value in context.items()}
            return templates.TemplateResponse(request, f"{name}.html", values, headers=SECURITY_HEADERS)

        return render

    async def login_page(request: Request) -> Response:
        if not console.sessions.needs_login:
            return RedirectResponse("/", 303)
        return _login_form(request, None, 200)

    def _login_form(request: Request, problem: str | None, status: int) -> Response:
        session: Session = request.state.session
        context = {"csrf": session.csrf, "problem": problem, "needs_login": True, "page": "login"}
        return templates.TemplateResponse(request, "login.html", context, status_code=status, headers=SECURITY_HEADERS)

    async def login(request: Request) -> Response:
        sessions = console.sessions
        session: Session | None = request.state.session
        form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
        if session is None or not csrf_matches(session, next(iter(form.get("csrf") or []), None)):
            return _reply(403, "refused: the login form expired (reload the page)")
        if sessions.throttled():
            return _login_form(request, "too many wrong passwords: wait a minute", 429)
        password = (form.get("password") or [""])[0]
        if not await run_in_threadpool(sessions.check_password, password):
            return _login_form(request, "wrong password", 401)
        sessions.close(request.state.session_token)
        token, _ = sessions.open(authenticated=True)
        response = RedirectResponse("/", 303, headers=SECURITY_HEADERS)
        response.headers.append("set-cookie", session_cookie(token, console.secure_cookie))
        return response

    async def logout(request: Request) -> Response:
        console.sessions.close(request.state.session_token)
        response = RedirectResponse("/login" if console.sessions.needs_login else "/", 303)
        response.headers.append("set-cookie", session_cookie("", console.secure_cookie, max_age=0))
        return response

    # ---------------------------------------------------------------- fleet and devices

    async def fleet(request: Request) -> Response:
        return JSONResponse({"connected": state.connected, "devices": state.fleet(), "now": utc_text(state.clock())})

    async def series(request: Request) -> Response:
        wanted = [d for d in request.query_params.getlist("device") if is_device_id(d)][:100]
        return JSONResponse({"series": state.series(wanted)})

    def _device(request: Request) -> str:
        device = request.path_params["device"]
        if not is_device_id(device) or device not in state.device_ids():
            raise HTTPException(404, "no such device on this broker")
        return device

    async def device_view(request: Request) -> Response:
        device = _device(request)
        view = state.device(device) or {}
        actions = [entry for entry in console.actions if entry["device"] == device]
        return JSONResponse(view | {"actions": actions, "rollout": console.rollouts.latest_for(device)})

    async def device_config(request: Request) -> Response:
        device = _device(request)
        return _outcomes(await run_in_threadpool(remote.call, [device], "get_config", {}))

    async def device_set_config(request: Request) -> Response:
        device = _device(request)
        values = (await read_json(request)).get("values")
        if not isinstance(values, dict) or not values:
            raise HTTPException(400, "nothing to change")
        checked = {str(key)[:100]: _setting_value(value, str(key)[:100]) for key, value in values.items()}
        outcomes = await run_in_threadpool(remote.call, [device], "set_config", {"values": checked})
        console.record(request, "set_config", outcomes, ", ".join(sorted(checked)))
        return _outcomes(outcomes)

    async def device_restart(request: Request) -> Response:
        device = _device(request)
        outcomes = await run_in_threadpool(remote.call, [device], "restart", {})
        console.record(request, "restart", outcomes, "restart")
        return _outcomes(outcomes)

    async def device_audit(request: Request) -> Response:
        """A page of the device's own audit log (`get_audit`, signed): local CLI actions included."""
        device = _device(request)
        arguments: dict[str, Any] = {"limit": AUDIT_PAGE}
        before = request.query_params.get("before", "")
        if before:
            if not before.isdigit() or not 0 < int(before) < 2**63:
                raise HTTPException(400, "before: must be a record number")
            arguments["before"] = int(before)
        return _outcomes(await run_in_threadpool(remote.call, [device], "get_audit", arguments))

    async def device_model_update(request: Request) -> Response:
        device = _device(request)
        return _outcomes(await run_in_threadpool(remote.call, [device], "model_update", {"phase": "status"}))

    async def releases(request: Request) -> Response:
        folder = console.releases
        return JSONResponse({"folder": str(folder) if folder else None, "releases": releases_in(folder)})

    async def model_updates(request: Request) -> Response:
        return JSONResponse({"jobs": console.rollouts.jobs()})

    async def start_model_update(request: Request) -> Response:
        """A release bundle from `--releases` on the devices chosen (every online device: one copy per phase
        for those that take fleet-wide requests), on a worker thread; the pages poll its progress."""
        body = await read_json(request)
        devices = _devices(body.get("devices"), state.online())
        name = body.get("release")
        found = bundles(console.releases) if console.releases else {}
        if not isinstance(name, str) or not name.endswith(BUNDLE_SUFFIX) or name not in found:
            raise HTTPException(400, "choose a release bundle from the console's --releases folder")
        try:
            release = await run_in_threadpool(read_bundle, found[name])
            fleet = state.taking_fleet_requests() if sorted(devices) == state.online() else set()
            job = console.rollouts.start(name, release, devices, fleet)
        except ReleaseError as exc:
            raise HTTPException(400, str(exc)) from None
        console.record_all(request, "model_update", devices, f"install {release.describe()} (job {job.job_id})")
        return JSONResponse({"job": job.to_json()})

    # ---------------------------------------------------------------- people

    async def people(request: Request) -> Response:
        online = state.online()
        outcomes = await run_in_threadpool(remote.people, online, fleet=state.taking_fleet_requests())
        per_device = {d: list(o.data.get("people") or []) for d, o in outcomes.items() if o.ok}
        problems = {d: o.error for d, o in outcomes.items() if not o.ok}
        offline = [d for d in state.device_ids() if d not in online]
        return JSONResponse(
            {"people": merge_people(per_device), "devices": online, "problems": problems, "offline": offline}
        )

    async def enroll(request: Request) -> Response:
        limit = console.limits.max_payload_bytes + SMALL_BODY_BYTES
        body = await read_json(request, limit)
        devices = _devices(body.get("devices"), state.online())
        arguments = _person_and_consent(body) | {"images": _photos(body.get("images"), console.limits)}
        name = arguments["name"]
        online = state.online()
        # Every online device chosen: one copy of the photos for all that take fleet-wide requests.
        fleet = state.taking_fleet_requests() if sorted(devices) == online else set()
        outcomes = await run_in_threadpool(remote.call, devices, "enroll", arguments, fleet=fleet)
        del arguments, body  # the photos go no further than the devices
        console.record(request, "enroll", outcomes, f"enroll {name}")
        return _outcomes(outcomes)

    async def rename(request: Request) -> Response:
        body = await read_json(request)
        targets = _targets(body.get("targets"), state.online())
        name = _text(body.get("name"), "name", required=True)
        results: dict[str, Outcome] = {}
        for device, person_id in targets:
            args = {"person_id": person_id, "name": name}
            results |= await run_in_threadpool(remote.call, [device], "update_person", args)
        console.record(request, "update_person", results, f"rename to {name}")
        return _outcomes(results)

    async def erase(request: Request) -> Response:
        body = await read_json(request)
        targets = _targets(body.get("targets"), state.online())
        results: dict[str, Outcome] = {}
        for device, person_id in targets:
            results |= await run_in_threadpool(remote.call, [device], "delete_person", {"person_id": person_id})
        console.record(request, "delete_person", results, "erase " + ", ".join(p for _, p in targets))
        return _outcomes(results)

    async def enroll_from_camera(request: Request) -> Response:
        """Arm a capture on one device's camera (`enroll` with `from_camera`): the device collects the views
        itself; the page then polls `capture` for its progress. No image crosses the broker."""
        body = await read_json(request)
        (device,) = _devices([body.get("device")], state.online())
        arguments = _person_and_consent(body)
        camera: dict[str, Any] = {}
        for key, low, high in (("seconds", 3, 120), ("views", 1, MAX_CAPTURE_VIEWS)):
            value = body.get(key)
            if value not in (None, ""):
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                    raise HTTPException(400, f"{key}: a whole number from {low} to {high}")
                camera[key] = value
        arguments["from_camera"] = camera
        outcomes = await run_in_threadpool(remote.call, [device], "enroll", arguments)
        console.record(request, "enroll", outcomes, f"enroll {arguments['name']} from the camera")
        return _outcomes(outcomes)

    async def capture(request: Request) -> Response:
        """A capture's progress (or, by POST, its cancellation), as the device reports it."""
        body = await read_json(request) if request.method == "POST" else dict(request.query_params)
        (device,) = _devices([body.get("device")], state.online())
        capture_id = _text(body.get("capture_id"), "capture id", required=True)
        asked: dict[str, Any] = {"capture_id": capture_id} | ({"cancel": True} if request.method == "POST" else {})
        return _outcomes(await run_in_threadpool(remote.call, [device], "enroll", {"from_camera": asked}))

    # ---------------------------------------------------------------- events and metrics

    async def correct(request: Request) -> Response:
        """A correction of one event's decision, on the device that made it: wrong person, is person, or
        enroll this unknown face (with consent). The device acts on the face it still holds for that event."""
        body = await read_json(request)
        (device,) = _devices([body.get("device")], state.device_ids())
        action = body.get("action")
        event_id = body.get("event_id")
        if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
            raise HTTPException(400, "event id: not an event's id")
        arguments: dict[str, Any] = {"event_id": event_id}
        if action == "is_person":
            person_id = body.get("person_id")
            if not isinstance(person_id, str) or not PERSON_ID.fullmatch(person_id):
                raise HTTPException(400, "choose the person the face is")
            arguments["person_id"] = person_id
        elif action == "enroll_from_event":
            arguments |= _person_and_consent(body)
        elif action != "wrong_person":
            raise HTTPException(400, "action: wrong_person, is_person or enroll_from_event")
        outcomes = await run_in_threadpool(remote.call, [device], action, arguments)
        console.record(request, action, outcomes, f"event {event_id}")
        return _outcomes(outcomes)

    async def event_stream(request: Request) -> Response:
        device = request.query_params.get("device", "")[:64]
        person = request.query_params.get("person", "")[:200]
        kind = request.query_params.get("type", "")[:64]
        queue: asyncio.Queue[FleetEvent] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()

        def put(event: FleetEvent) -> None:
            if not queue.full():
                queue.put_nowait(event)

        def listener(event: FleetEvent) -> None:
            if event.matches(device, person, kind):
                with contextlib.suppress(RuntimeError):  # the server is shutting down
                    loop.call_soon_threadsafe(put, event)

        stop = state.listen(listener)
        backlog = state.events(device, person, kind, limit=200)

        async def body() -> AsyncIterator[str]:
            try:
                for event in backlog:
                    yield _sse(event)
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": still here\n\n"
                        continue
                    yield _sse(event)
            finally:
                stop()

        headers = SECURITY_HEADERS | {"X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    registry = registry_for(state)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, exc.status_code, headers=SECURITY_HEADERS)
        return _reply(exc.status_code, str(exc.detail))

    routes = [
        Route("/", page("fleet")),
        Route("/events", page("events")),
        Route("/people", page("people")),
        Route("/device/{device}", page("device", device=lambda r: r.path_params["device"])),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/fleet", fleet),
        Route("/api/series", series),
        Route("/api/device/{device}", device_view),
        Route("/api/device/{device}/config", device_config, methods=["GET"]),
        Route("/api/device/{device}/config", device_set_config, methods=["POST"]),
        Route("/api/device/{device}/restart", device_restart, methods=["POST"]),
        Route("/api/device/{device}/audit", device_audit),
        Route("/api/device/{device}/model-update", device_model_update),
        Route("/api/releases", releases),
        Route("/api/model-updates", model_updates, methods=["GET"]),
        Route("/api/model-updates", start_model_update, methods=["POST"]),
        Route("/api/people", people),
        Route("/api/people/enroll", enroll, methods=["POST"]),
        Route("/api/people/rename", rename, methods=["POST"]),
        Route("/api/people/erase", erase, methods=["POST"]),
        Route("/api/people/enroll-camera", enroll_from_camera, methods=["POST"]),
        Route("/api/people/capture", capture, methods=["GET", "POST"]),
        Route("/api/events/correct", correct, methods=["POST"]),
        Route("/api/events", event_stream),
        Route("/metrics", metrics),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", static, name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: failed})
    app.add_middleware(Guard, console=console)
    return app


def _sse(event: FleetEvent) -> str:
    return f"id: {event.seq}\nevent: fleet\ndata: {json.dumps(event.to_json(), separators=(',', ':'))}\n\n"


def _photos(value: Any, limits: CommandSettings) -> list[dict[str, str]]:
    """The uploaded photos as the device takes them (base64 JPEG or PNG), checked here as `ctl` checks."""
    if not isinstance(value, list) or not value:
        raise HTTPException(400, "choose at least one photo")
    if len(value) > limits.max_images:
        raise HTTPException(400, f"{len(value)} photos: a device takes at most {limits.max_images} per enrollment")
    photos = []
    for index, item in enumerate(value):
        data = item.get("data") if isinstance(item, dict) else None
        label = item.get("label") if isinstance(item, dict) else None
        label = label[:100] if isinstance(label, str) and label.strip() else f"photo {index + 1}"
        try:
            Image(limits.max_image_bytes).check(data, label)
        except CommandError as exc:
            raise HTTPException(400, exc.message) from None
        photos.append({"data": str(data), "label": label})
    return photos
