"""Who may open the page: on 127.0.0.1 whoever can reach the machine's loopback; elsewhere only a
browser that brings the server's token (``?token=...`` once, then a cookie). The page's websocket is
refused to other sites (its Origin must be the page's own address, so a web page the reader visits
cannot drive the session) and to a second page: a server is one reader's session."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

Middleware = Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]],
                      Awaitable[web.StreamResponse]]
LOCAL_HOSTS = ("localhost",)
# Bytes of a message around an uploaded file's content (its name, type and the call's envelope).
MESSAGE_OVERHEAD = 2**16


def is_local(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random token for ``--token auto``."""
    return secrets.token_urlsafe(24)


def cookie_name(request: web.Request) -> str:
    """The token's cookie, one per port: cookies are shared by every port of a host."""
    return f"shapeprior_token_{request.url.port}"


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def token_middleware(token: str) -> Middleware:
    """Refuse (403) requests without the token, in the query or the cookie it sets; the page's
    websocket carries the cookie."""

    @web.middleware
    async def check(request: web.Request, handler):
        given = request.query.get("token")
        if given is not None and _same(given, token):
            response = await handler(request)
            if not response.prepared:  # a page, not the upgraded websocket
                response.set_cookie(cookie_name(request), token, httponly=True, samesite="Strict")
            return response
        if _same(request.cookies.get(cookie_name(request), ""), token):
            return await handler(request)
        raise web.HTTPForbidden(text="shapeprior: this page needs its token: open the address `shapeprior serve` "
                                     "printed\n")

    return check


def page_middleware(local: bool) -> Middleware:
    """Refuse a websocket from another site (403: its Origin is not this address; on a local server
    also a Host that is not a loopback name, as a DNS-rebinding site sends) and a second live page (409)."""
    open_pages = 0

    @web.middleware
    async def check(request: web.Request, handler):
        nonlocal open_pages
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await handler(request)
        origin = urlsplit(request.headers.get("Origin", "")).netloc
        if origin != request.host or (local and not is_local(request.url.host or "")):
            raise web.HTTPForbidden(text="shapeprior: the page's connection must come from its own address\n")
        if open_pages:
            raise web.HTTPConflict(text="shapeprior: this session is open in another page; start another "
                                        "`shapeprior serve --port N` for a second reader\n")
        open_pages += 1
        try:
            return await handler(request)  # returns when the page's connection closes
        finally:
            open_pages -= 1

    return check


def guard(server, token: str | None, local: bool = True) -> None:
    """Install the middlewares on the trame ``server``'s aiohttp app when it is bound: the token
    first (when there is one), then the websocket's checks."""
    middlewares = ([token_middleware(token)] if token else []) + [page_middleware(local)]
    server.controller.on_server_bind.add(lambda wslink_server: wslink_server.app.middlewares.extend(middlewares))


def cap_messages(wslink_server: Any, max_upload_bytes: int) -> None:
    """Hold a page's pending messages together to an upload's size. After the page's hello, wslink
    accepts messages of up to 4 GB each and allocates each in full on its first chunk, so a client
    bypassing the page's own size check could make the server reserve that much, or more over several
    messages at once. Called with the bound wslink server (``on_server_bind``)."""
    limit = max_upload_bytes + MESSAGE_OVERHEAD
    for handler in wslink_server._ws_handlers:  # wslink has no setting for this
        hello = handler.handleSystemMessage

        async def capped(rpcid, method, args, client_id, handler=handler, hello=hello):
            handled = await hello(rpcid, method, args, client_id)
            if method == "wslink.hello" and client_id in handler.authentified_client_ids:
                handler.unchunkers[client_id] = CappedUnChunker(limit)  # the hello was whole: nothing pending
            return handled

        handler.handleSystemMessage = capped


class CappedUnChunker(UnChunker):
    """wslink's reassembly of a client's chunked messages, with one limit (bytes) on all of its pending
    messages together."""

    def __init__(self, limit: int):
        super().__init__()
        self.max_message_size = limit

    def set_max_message_size(self, size: int) -> None:
        """The limit is this class's own; wslink's later calls are ignored."""

    def process_chunk(self, chunk: bytes):
        message, _, size = _decode_header(chunk[:HEADER_LENGTH])
        if message not in self.pending_messages:
            pending = sum(len(p["content"]) for p in self.pending_messages.values())
            if pending + size > self.max_message_size:
                raise ValueError(f"messages of {pending + size} bytes exceed the limit of {self.max_message_size}")
        return super().process_chunk(chunk)
