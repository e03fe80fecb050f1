"""Who may open the page: on 127.0.0.1 whoever can reach the machine's loopback; elsewhere only a
browser that brings the server's token (``?token=...`` once, then a cookie). One page at a time: a
server is one reader's session, and a second page would see (and change) the first one's scene."""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from aiohttp import web

COOKIE = "shapeprior_token"
LOCAL_HOSTS = ("localhost",)


def is_local(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_middleware(token: str):
    """An aiohttp middleware refusing (403) requests without the token, in the query or the cookie
    it sets; the page's websocket carries the cookie."""

    @web.middleware
    async def check(request: web.Request, handler):
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given, token):
            response = await handler(request)
            if not response.prepared:  # a page, not the upgraded websocket
                response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return response
        if hmac.compare_digest(request.cookies.get(COOKIE, ""), token):
            return await handler(request)
        raise web.HTTPForbidden(text="shapeprior: this page needs its token: open the address `shapeprior serve` "
                                     "printed\n")

    return check


def one_page_middleware():
    """An aiohttp middleware refusing (409) a second live websocket: the page of another reader."""
    open_pages = 0

    @web.middleware
    async def check(request: web.Request, handler):
        nonlocal open_pages
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await handler(request)
        if open_pages:
            raise web.HTTPConflict(text="shapeprior: this session is open in another page; start another "
                                        "`shapeprior serve --port N` for a second reader\n")
        open_pages += 1
        try:
            return await handler(request)  # returns when the page's connection closes
        finally:
            open_pages -= 1

    return check


def guard(server, token: str | None) -> None:
    """Install the middlewares on the trame server's aiohttp app when it is bound: one page at a time,
    and the token when there is one."""
    middlewares = [one_page_middleware()] + ([token_middleware(token)] if token else [])
    server.controller.on_server_bind.add(lambda wslink_server: wslink_server.app.middlewares.extend(middlewares))
