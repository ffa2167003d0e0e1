"""`python -m shoggoth.explorer.launch run APP ARGS`: `streamlit run APP ARGS` (what `shoggoth
explore` starts) with one more check in front of Streamlit's server, against DNS rebinding: a
request or WebSocket whose Host header names anything but this machine's loopback (localhost,
127.x.y.z, ::1) or the address the explorer was asked to listen on (`--host`) is answered 403.

A web page on a name its owner points at 127.0.0.1 after the page has loaded is, to the browser,
the same origin as the explorer; only its Host header still carries that name.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

WILDCARDS = ("", "0.0.0.0", "::")
"""Bind addresses meaning every interface: the machine is then reached by any of its
addresses or by its own name."""


def host_name(header: str) -> str:
    """The host of a Host header: lower case, without its port, brackets or final dot."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8501
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        value = value.split(":")[0]
    return value.rstrip(".")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_allowed(header: str, bind: str) -> bool:
    """Whether a request with this Host header may reach the explorer listening on `bind`:
    loopback names and addresses, the bind address itself, and, when it listens on every
    interface, any IP address (a page on an address is no rebound name) and the machine's own
    name."""
    name = host_name(header)
    if not name:
        return False
    address = _address(name)
    if name == "localhost" or (address is not None and address.is_loopback):
        return True
    bound = host_name(bind)
    if name == bound or (address is not None and address == _address(bound)):
        return True
    if bind.strip() in WILDCARDS:
        return address is not None or name in {
            socket.gethostname().lower(),
            socket.getfqdn().lower(),
        }
    return False


class HostCheck:
    """ASGI middleware: 403 for an HTTP request or WebSocket upgrade whose Host is not allowed
    (`host_allowed`); everything else passes untouched."""

    def __init__(self, app: ASGIApp, bind: str) -> None:
        self.app = app
        self.bind = bind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next(
                (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), ""
            )
            if not host_allowed(host, self.bind):
                await self.refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import PlainTextResponse

        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
            "extensions", {}
        ):
            await send({"type": "websocket.close", "code": 1008})  # (the server answers 403)
            return
        response = PlainTextResponse(
            "403: this host name is not the explorer's (see docs/explorer.md)\n", status_code=403
        )
        await response(scope, receive, send)


def guard_streamlit() -> None:
    """Put `HostCheck` in front of the middleware of the Streamlit server this process will
    start (Streamlit's Starlette app; its listen address from its own configuration, when it
    builds the app). Refuses to go on when Streamlit no longer builds its server this way."""
    from streamlit import config
    from streamlit.web.server.starlette import starlette_app

    original = getattr(starlette_app, "create_streamlit_middleware", None)
    if original is None:
        raise RuntimeError(
            "this Streamlit builds its server differently: the explorer's Host "
            "check (shoggoth.explorer.launch) needs updating"
        )

    def middleware() -> list[Middleware]:
        from starlette.middleware import Middleware

        bind = str(config.get_option("server.address") or "")
        return [Middleware(HostCheck, bind=bind), *original()]

    starlette_app.create_streamlit_middleware = middleware


def main() -> None:
    guard_streamlit()
    from streamlit.web.cli import main as streamlit

    streamlit(args=sys.argv[1:], prog_name="streamlit")


if __name__ == "__main__":
    main()
