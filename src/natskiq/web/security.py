"""Who may see the dashboard, and proof that an action comes from it.

:class:`Auth` guards every request when ``--auth`` is given: ``user:password``
asks for HTTP basic auth; ``token:SECRET`` takes ``Authorization: Bearer
SECRET`` or ``?token=SECRET`` once (the browser then holds a cookie derived
from it, and the token leaves the address bar at once).

:class:`Csrf` protects every action: a page hands out a random token, signed
with the app's key, both in a cookie (``SameSite=Strict``, ``HttpOnly``) and
in each form; a POST is refused unless the two match and the signature
holds, and any POST a browser marks as cross-site is refused outright. A
page elsewhere can neither read the token nor plant a cookie that passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlencode

import attrs
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from natskiq.errors import ConfigError

AUTH_COOKIE = "natskiq_auth"
CSRF_COOKIE = "natskiq_csrf"
CSRF_FIELD = "csrf"


def _sign(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def cookie_path(conn: HTTPConnection) -> str:
    """The path every cookie is scoped to: where the dashboard is mounted."""
    return str(conn.scope.get("root_path", "")).rstrip("/") or "/"


def set_cookie(response: Response, conn: HTTPConnection, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=cookie_path(conn), httponly=True, samesite="strict",
        secure=conn.url.scheme == "https",
    )  # fmt: skip


@attrs.frozen(kw_only=True)
class Auth:
    """The credentials the dashboard asks for (``--auth``)."""

    kind: Literal["basic", "token"]
    user: str
    secret: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> Auth:
        """``user:password`` (basic auth) or ``token:SECRET`` (a bearer token).

        Raises:
            ConfigError: neither form, or an empty part.
        """
        user, sep, secret = spec.partition(":")
        if not sep or not user or not secret:
            raise ConfigError("--auth takes user:password (basic auth) or token:SECRET (a bearer token)")
        if user == "token":
            return cls(kind="token", user="", secret=secret)
        return cls(kind="basic", user=user, secret=secret)

    def allows(self, conn: HTTPConnection, key: bytes) -> bool:
        """Whether the request carries these credentials (or the cookie they earned)."""
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if self.kind == "basic":
            return scheme.lower() == "basic" and self._basic_matches(value.strip())
        if scheme.lower() == "bearer" and _same(value.strip(), self.secret):
            return True
        return _same(conn.cookies.get(AUTH_COOKIE, ""), self.cookie(key))

    def cookie(self, key: bytes) -> str:
        """The cookie a valid ``?token=`` earns: derived from the token, not the token."""
        return _sign(key, "auth", self.secret)

    def _basic_matches(self, value: str) -> bool:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # Both compared, always, so the time taken says nothing about which was wrong.
        return _same(user, self.user) & _same(password, self.secret)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@attrs.define
class AuthMiddleware:
    """ASGI middleware that answers 401 to any HTTP request without the credentials."""

    app: ASGIApp
    auth: Auth
    key: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if self.auth.allows(conn, self.key):
            await self.app(scope, receive, send)
            return
        token = conn.query_params.get("token")
        if self.auth.kind == "token" and token is not None and _same(token, self.auth.secret):
            await self._welcome(conn)(scope, receive, send)
            return
        await self._refuse()(scope, receive, send)

    def _welcome(self, conn: HTTPConnection) -> Response:
        """Trade ``?token=`` for a cookie, and drop it from the address (history, Referer)."""
        query = urlencode([(k, v) for k, v in conn.query_params.multi_items() if k != "token"])
        target = str(conn.url.replace(query=query))
        response = RedirectResponse(target, status_code=303)
        set_cookie(response, conn, AUTH_COOKIE, self.auth.cookie(self.key))
        return response

    def _refuse(self) -> Response:
        if self.auth.kind == "basic":
            return PlainTextResponse(
                "authentication required", status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="natskiq", charset="UTF-8"'},
            )  # fmt: skip
        return PlainTextResponse(
            "authentication required: send 'Authorization: Bearer <token>'"
            " or open this page with ?token=<token>",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="natskiq"'},
        )


@attrs.frozen
class Csrf:
    """Signed double-submit tokens for the dashboard's forms."""

    key: bytes

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{_sign(self.key, 'csrf', nonce)}"

    def valid(self, token: str) -> bool:
        nonce, _, signature = token.partition(".")
        return bool(nonce) and _same(signature, _sign(self.key, "csrf", nonce))

    def token_for(self, request: Request) -> tuple[str, bool]:
        """The request's token, and whether it is new (then the response must set the cookie)."""
        current = request.cookies.get(CSRF_COOKIE, "")
        if self.valid(current):
            return current, False
        return self.issue(), True

    def check(self, request: Request, form: Mapping[str, list[str]]) -> str | None:
        """Why a POST is refused, or None when it may go ahead."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "cross-site request refused"
        cookie = request.cookies.get(CSRF_COOKIE, "")
        field = (form.get(CSRF_FIELD) or [""])[0]
        if not cookie or not self.valid(cookie) or not _same(field, cookie):
            return "missing or invalid CSRF token: reload the page and try again"
        return None


HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@attrs.define
class SecurityHeaders:
    """ASGI middleware adding a strict Content-Security-Policy (no inline script) and friends."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k.lower().encode() not in have
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
