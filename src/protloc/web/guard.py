"""Guards in front of the web app.

:class:`Guard` (ASGI, outermost): the request-size limit counted while the body streams in (413
as soon as it is crossed, nothing buffered), a cap on requests that upload at the same time
(503), and the security headers on every response (pages, JSON, errors, static files, /docs).

:func:`guarded_protocol` (uvicorn): the HTTP/1.1 connection class ``protloc serve`` runs. uvicorn
has a keep-alive timeout but no header- or body-read timeout, and its ``limit_concurrency`` counts
open connections, so ~70 sockets that never finish their headers made every request answer 503.
This class closes a connection whose request line and headers are not complete within
``header_timeout_s`` (counted from the first byte, so trickling does not help) and one whose body
stalls for ``body_timeout_s`` (or takes longer than ``request_timeout_s`` in all); it caps open
connections per client address and in all, making room by closing the oldest connection that is
not inside a request (a stalled or idle one) before it refuses a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from protloc.core.errors import InputError
from protloc.web.uploads import MB

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from a CDN and start them inline
DOCS_CSP = ("default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; worker-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def security_headers(path: str = "/") -> list[tuple[bytes, bytes]]:
    """The headers every response carries (the docs pages get a CSP that lets them load their CDN).

    Examples
    --------
    >>> dict(security_headers("/health"))[b"x-frame-options"]
    b'DENY'
    """
    csp = DOCS_CSP if path in DOCS_PATHS else CSP
    return [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


_OURS = {name for name, _ in security_headers()}


def json_reply_bytes(status: int, reason: str, error: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response (JSON body, security headers, ``connection: close``) as bytes, for
    answers written straight to a socket before any request was parsed."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(), b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), b"connection: close"]
    head += [k + b": " + v for k, v in security_headers()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Guard:
    """ASGI guard: streamed body limit, upload concurrency cap, security headers on every response.

    Parameters
    ----------
    app : the ASGI app to protect.
    max_bytes : largest request body; counted as it streams in, 413 as soon as it is crossed.
    max_active : requests with a body (POST/PUT/PATCH) handled at once; more get 503 at once
        (GET /health and the page are never refused).
    drain_s : how long to keep reading (and dropping) a refused body so the client sees the 413.
    """

    def __init__(self, app, *, max_bytes: int, max_active: int = 16, drain_s: float = 2.0):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.max_active = int(max_active)
        self.drain_s = float(drain_s)
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = {"start": False}
        send = self._with_headers(scope, send, sent)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                return await self._reply(send, 400, "bad request", "Content-Length: expected a non-negative "
                                         "integer, got " + repr(length.decode("latin-1")[:40]) + ". Fix: send a "
                                         "valid request")
            if n > self.max_bytes:
                await self._drain(receive, limit=min(n, self.max_bytes))
                return await self._too_large(send, n)
        if self.active >= self.max_active:
            return await self._reply(send, 503, "server busy",
                                     f"{self.active} uploads are being handled. Fix: retry in a moment",
                                     extra=[(b"retry-after", b"2")])
        self.active += 1
        try:
            return await self._streamed(scope, receive, send, sent)
        finally:
            self.active -= 1

    async def _streamed(self, scope, receive, send, sent):
        """Pass the body through chunk by chunk, counting; past ``max_bytes`` the app is told the
        client left (``http.disconnect``), whatever it answers is dropped, and a 413 goes out."""
        state = {"n": 0, "over": False, "more": False}

        async def counted():
            if state["over"]:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                state["n"] += len(msg.get("body", b""))
                if state["n"] > self.max_bytes:
                    state["over"], state["more"] = True, bool(msg.get("more_body"))
                    return {"type": "http.disconnect"}
            return msg

        async def unless_over(msg):
            if state["over"] and not sent["start"]:
                return None  # the app's answer to the 'disconnect'; our 413 replaces it
            return await send(msg)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not state["over"] or sent["start"]:
                raise
        if state["over"] and not sent["start"]:
            if state["more"]:
                await self._drain(receive, limit=self.max_bytes)
            await self._too_large(send, state["n"], at_least=True)

    async def _drain(self, receive, *, limit: int) -> None:
        """Read (and drop) up to ``limit`` more bytes for at most ``drain_s`` so the client, still
        sending, reads the 413 instead of a reset connection."""

        async def read():
            seen = 0
            while seen < limit:
                msg = await receive()
                if msg["type"] != "http.request":
                    return
                seen += len(msg.get("body", b""))
                if not msg.get("more_body"):
                    return

        try:
            await asyncio.wait_for(read(), timeout=self.drain_s)
        except asyncio.TimeoutError:
            pass

    async def _too_large(self, send, n: int, *, at_least: bool = False):
        got = f"{'more than ' if at_least else ''}{n / MB:.1f} MB"
        return await self._reply(send, 413, "request too large",
                                 str(InputError("request", expected=f"at most {self.max_bytes / MB:g} MB in one "
                                             "request", got=got, fix="send fewer or smaller images per "
                                             "request, or start the server with a larger --max-request-mb")))

    @staticmethod
    async def _reply(send, status: int, error: str, detail: str, *, extra=()):
        body = json.dumps({"error": error, "detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *extra]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _with_headers(scope, send, sent):
        extra = security_headers(scope.get("path", "/"))

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                sent["start"] = True
                msg = dict(msg)
                msg["headers"] = [(k, v) for k, v in (msg.get("headers") or []) if k.lower() not in _OURS] + extra
            await send(msg)

        return wrapped


# --------------------------------------------------------------------------------------------
# uvicorn: read timeouts and connection caps
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts and caps of :func:`guarded_protocol` (seconds, connection counts)."""

    header_timeout_s: float = 10.0   # request line + headers complete within this, from the first byte
    body_timeout_s: float = 30.0     # longest pause while a request body streams in
    request_timeout_s: float = 300.0  # the whole body within this
    max_connections: int = 256       # open connections in all
    max_per_client: int = 64         # open connections from one client address

    def check(self) -> ConnectionLimits:
        for name in ("header_timeout_s", "body_timeout_s", "request_timeout_s", "max_connections", "max_per_client"):
            if not getattr(self, name) > 0:
                from protloc.core.errors import InputError

                raise InputError(name, expected="a positive number", got=str(getattr(self, name)),
                                 fix="drop the option to use the default")
        return self


class _Registry:
    """Open connections in arrival order, in all and per client address (one event loop: no locks)."""

    def __init__(self):
        self.all: OrderedDict = OrderedDict()
        self.by_client: dict[str, OrderedDict] = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    def add(self, proto) -> None:
        self.all[proto] = None
        self.by_client.setdefault(proto.client_key, OrderedDict())[proto] = None

    def remove(self, proto) -> None:
        self.all.pop(proto, None)
        mine = self.by_client.get(proto.client_key)
        if mine is not None:
            mine.pop(proto, None)
            if not mine:
                del self.by_client[proto.client_key]

    def count(self, key: str) -> int:
        return len(self.by_client.get(key, ()))

    @staticmethod
    def oldest_idle(conns):
        for proto in conns:
            if proto.idle():
                return proto
        return None


def guarded_protocol(limits: ConnectionLimits | None = None):
    """A uvicorn HTTP/1.1 (h11) protocol class with read timeouts and connection caps.

    Use it as ``uvicorn.Config(app, http=guarded_protocol(ConnectionLimits()))``; each call makes a
    class with its own connection registry (``cls.registry``: counts of refused, evicted and timed
    out connections).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limits = (limits or ConnectionLimits()).check()
    registry = _Registry()
    log = logging.getLogger("protloc.web")

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.client_key = "?"
            self._refused = False
            self._header_timer = None
            self._body_timer = None
            self._body_deadline = None
            self._seen_bytes = False

        # -- connections ------------------------------------------------------------------
        def connection_made(self, transport):
            peer = transport.get_extra_info("peername")
            self.client_key = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "local"
            if not self._make_room():
                self._refused = True
                self.transport = transport
                registry.refused += 1
                transport.write(json_reply_bytes(503, "Service Unavailable", "too many connections",
                                                 "the server has too many open connections. Fix: retry in a moment, "
                                                 "and close idle connections"))
                transport.close()
                return
            super().connection_made(transport)
            registry.add(self)
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._on_header_timeout)

        def _make_room(self) -> bool:
            """True when this connection fits, after closing the oldest idle one if needed."""
            if registry.count(self.client_key) >= limits.max_per_client:
                victim = registry.oldest_idle(registry.by_client.get(self.client_key, ()))
                if victim is None:
                    return False
                victim._close(evicted=True)
            if len(registry.all) >= limits.max_connections:
                victim = registry.oldest_idle(registry.all)
                if victim is None:
                    return False
                victim._close(evicted=True)
            return True

        def idle(self) -> bool:
            """Not inside a request: headers not complete yet, or waiting for the next request."""
            return self.cycle is None or self.cycle.response_complete

        def connection_lost(self, exc):
            if self._refused:
                return
            registry.remove(self)
            self._cancel_timers()
            super().connection_lost(exc)

        def _close(self, *, evicted: bool = False, timeout: str | None = None) -> None:
            if self.transport is None or self.transport.is_closing():
                return
            if evicted:
                registry.evicted += 1
            if timeout:
                registry.timed_out += 1
                log.info("closing connection from %s: %s", self.client_key, timeout)
                if self._seen_bytes and (self.cycle is None or not self.cycle.response_started):
                    self.transport.write(json_reply_bytes(408, "Request Timeout", "request timeout",
                                                          f"{timeout}. Fix: send the whole request at once"))
            self._cancel_timers()
            registry.remove(self)
            self.transport.close()

        def _cancel_timers(self) -> None:
            for name in ("_header_timer", "_body_timer"):
                timer = getattr(self, name)
                if timer is not None:
                    timer.cancel()
                    setattr(self, name, None)

        # -- timeouts ---------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._seen_bytes = True
            super().data_received(data)
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE:  # a request's head is on its way
                if self._header_timer is None:
                    self._header_timer = self.loop.call_later(limits.header_timeout_s, self._on_header_timeout)
                return
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if state is h11.SEND_BODY:
                if self._body_deadline is None:
                    self._body_deadline = time.monotonic() + limits.request_timeout_s
                self._arm_body_timer()
            else:
                self._body_deadline = None
                if self._body_timer is not None:
                    self._body_timer.cancel()
                    self._body_timer = None

        def _arm_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
            wait = min(limits.body_timeout_s, max(0.0, self._body_deadline - time.monotonic()))
            self._body_timer = self.loop.call_later(wait, self._on_body_timeout)

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and self.idle():
                self._close(timeout=f"request line and headers not complete within {limits.header_timeout_s:g} s")

        def _on_body_timeout(self) -> None:
            self._body_timer = None
            if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
                return
            if time.monotonic() >= self._body_deadline:
                return self._close(timeout=f"request body not complete within {limits.request_timeout_s:g} s")
            waiting_on_us = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
            if waiting_on_us:  # the app has not read what came; not the client's stall
                return self._arm_body_timer()
            self._close(timeout=f"no request body data for {limits.body_timeout_s:g} s")

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a malformed request, as JSON with the security headers."""
            self.transport.write(json_reply_bytes(400, "Bad Request", "bad request",
                                                  f"{msg} Fix: send a valid HTTP/1.1 request"))
            self.transport.close()

    GuardedH11Protocol.registry = registry
    GuardedH11Protocol.limits = limits
    return GuardedH11Protocol
