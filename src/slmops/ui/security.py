"""Who may look and who may act.

- Read-only pages are open without a key only when the console is bound to loopback (and then
  only to requests whose ``Host`` names that loopback address, which stops DNS rebinding).
  On any other address the console refuses to start without ``--api-key``, and every page
  asks for the key.
- Anything that changes state (aliases, canary weights, roll-out controls) needs the key,
  either as ``Authorization: Bearer KEY`` (scripts; a browser cannot send that header across
  sites without a CORS pre-flight, which the console never grants) or as a signed-in session:
  an ``HttpOnly; SameSite=Strict`` cookie, a CSRF token bound to that session in the form or
  the ``X-CSRF-Token`` header, and an ``Origin`` (or ``Referer``) naming the console itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "slmops_ui_session"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Refused(Exception):
    """An HTTP refusal with a status and one-line message (rendered as a page or a fragment)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


@dataclass
class Guard:
    api_key: str | None
    host: str
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    sessions: set[str] = field(default_factory=set)

    @property
    def open_reads(self) -> bool:
        return is_loopback(self.host)

    # -- sessions -----------------------------------------------------------------------------
    def key_ok(self, key: str | None) -> bool:
        return bool(self.api_key) and key is not None and hmac.compare_digest(key.encode(), self.api_key.encode())

    def login(self, key: str | None) -> str:
        if not self.api_key:
            raise Refused(403, "This console has no API key; start `slmops ui` with --api-key to enable actions.")
        if not self.key_ok(key):
            raise Refused(401, "Wrong API key.")
        token = secrets.token_urlsafe(32)
        self.sessions.add(token)
        return token

    def logout(self, request: Request) -> None:
        self.sessions.discard(request.cookies.get(SESSION_COOKIE, ""))

    def session(self, request: Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        return token if token and token in self.sessions else None

    def csrf_token(self, session: str | None) -> str:
        if session is None:
            return ""
        return hmac.new(self.secret, f"csrf:{session}".encode(), hashlib.sha256).hexdigest()

    def bearer(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.key_ok(token.strip())

    # -- checks -------------------------------------------------------------------------------
    def check_host(self, request: Request) -> None:
        if self.open_reads:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host and not is_loopback(host):
                raise Refused(421, f"This console answers only to loopback host names, not {host!r}.")

    def can_read(self, request: Request) -> bool:
        return self.open_reads or self.bearer(request) or self.session(request) is not None

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin or origin == "null":
            return False
        parts = urlsplit(origin)
        return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.headers.get('host', '')}"

    def check_action(self, request: Request, form_token: str | None) -> None:
        """Raise :class:`Refused` unless this state-changing request carries the key properly."""
        if not self.api_key:
            raise Refused(403, "Actions are disabled: start `slmops ui` with --api-key to enable them.")
        if request.headers.get("origin") and not self.same_origin(request):
            raise Refused(403, "Cross-site request refused (the Origin is not this console).")
        if self.bearer(request):
            return
        session = self.session(request)
        if session is None:
            raise Refused(401, "This action needs the API key: sign in first.")
        if not self.same_origin(request):
            raise Refused(403, "Cross-site request refused (no Origin or Referer from this console).")
        token = request.headers.get("x-csrf-token") or form_token or ""
        if not hmac.compare_digest(token.encode(), self.csrf_token(session).encode()):
            raise Refused(403, "Missing or stale CSRF token; reload the page and try again.")
