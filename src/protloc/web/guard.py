"""ASGI guard in front of the app: request size limit (413 before any parsing) + security headers."""

from __future__ import annotations

import json

from protloc.core.errors import fmt_problem
from protloc.web.uploads import MB

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class Guard:
    """Reject bodies over ``max_bytes`` with 413 before any parsing; add security headers."""

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_headers(scope, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reply(send, 400, "bad request", "Content-Length: expected an integer. "
                                         "Fix: send a valid request")
            if n > self.max_bytes:
                await self._drain(receive, limit=min(n, 2 * self.max_bytes))
                return await self._too_large(send, n)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                if msg.get("more_body"):
                    await self._drain(receive, limit=2 * self.max_bytes - total)
                return await self._too_large(send, total, at_least=True)
            chunks.append(body)
            if not msg.get("more_body"):
                break
        data, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive, *, limit: int) -> None:
        """Read (and drop) a bit more of a refused body so the client sees the 413 cleanly."""
        seen = 0
        while seen < limit:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body"):
                return

    async def _too_large(self, send, n: int, *, at_least: bool = False):
        got = f"{'more than ' if at_least else ''}{n / MB:.1f} MB"
        return await self._reply(send, 413, "request too large",
                                 fmt_problem("request", expected=f"at most {self.max_bytes / MB:g} MB in one "
                                             "request", got=got, fix="send fewer or smaller images per "
                                             "request, or start the server with a larger --max-request-mb"))

    @staticmethod
    async def _reply(send, status: int, error: str, detail: str):
        body = json.dumps({"error": error, "detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _with_headers(scope, send):
        extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        if scope.get("path") in ("/", "/index.html"):
            extra += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers") or []) + extra
            await send(msg)

        return wrapped
