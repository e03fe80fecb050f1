"""Who may reach the page, and ``shapeprior serve``'s refusals: one line, exit code 2, no server started."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shapeprior.cli import main
from shapeprior.web.access import is_local, token_middleware


def test_the_token_is_asked_for_then_kept_in_a_cookie():
    async def run():
        app = web.Application(middlewares=[token_middleware("s3cret")])
        async def page(request):
            return web.Response(text="page")

        app.router.add_get("/", page)
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/")).status == 403
            assert (await client.get("/?token=wrong")).status == 403
            assert (await client.get("/?token=\u00e9")).status == 403  # not ASCII: refused, not a server error
            first = await client.get("/?token=s3cret")
            assert first.status == 200 and first.cookies[f"shapeprior_token_{client.port}"].value == "s3cret"
            assert (await client.get("/")).status == 200  # the cookie now carries it
            client.session.cookie_jar.clear()
            assert (await client.get("/")).status == 403

    asyncio.run(run())


def test_a_served_page_with_a_token_refuses_requests_without_it(tmp_path):
    import aiohttp
    from conftest import run_served

    async def body(served):
        async with aiohttp.ClientSession() as http:
            async with http.get(served.url) as response:
                assert response.status == 403
            async with http.get(served.url + "?token=t0ken") as response:
                assert response.status == 200 and "<html" in (await response.text()).lower()

    run_served(tmp_path, body, token="t0ken")


def test_other_sites_and_a_second_page_are_refused(tmp_path):
    import aiohttp
    from conftest import run_served

    async def body(served):
        page, own = served.url + "ws", served.url.rstrip("/")
        async with aiohttp.ClientSession() as http:
            for origin in (None, "http://evil.example", "http://127.0.0.1:1"):  # other sites' pages
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(page, origin=origin)
                assert refused.value.status == 403
            async with http.ws_connect(page, origin=own):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(page, origin=own)
                assert refused.value.status == 409
            await asyncio.sleep(0.2)  # the first page closed: another may open
            async with http.ws_connect(page, origin=own):
                pass

    run_served(tmp_path, body)


@pytest.mark.parametrize("case", ["one message too large", "two pending messages too large together",
                                  "a failed hello"])
def test_messages_larger_than_an_upload_are_refused_before_they_are_allocated(tmp_path, case):
    """wslink reserves a message's declared size on its first chunk: after the hello, a page whose pending
    messages declare more than an upload may hold is cut off (before the hello, wslink's own 512 bytes
    hold), and the server takes the next page."""
    import aiohttp
    import msgpack
    from conftest import run_served
    from wslink.chunking import _encode_header, generate_chunks

    def hello(secret):
        return msgpack.packb({"wslink": "1.0", "id": "system:c0:0", "method": "wslink.hello",
                              "args": [{"secret": secret}], "kwargs": {}})

    async def greet(ws, secret="wslink-secret"):
        for chunk in generate_chunks(hello(secret), 0):
            await ws.send_bytes(chunk)
        return msgpack.unpackb((await ws.receive(timeout=10)).data[12:])

    async def body(served):
        page, own = served.url + "ws", served.url.rstrip("/")
        limit = served.app.session.max_upload_bytes
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(page, origin=own) as ws:
                if case == "a failed hello":
                    assert "error" in await greet(ws, "wrong")
                    await ws.send_bytes(_encode_header(7, 0, 2**20) + b"x")
                else:
                    assert (await greet(ws))["result"]["clientID"]
                    await ws.send_bytes(_encode_header(7, 0, 2**20) + b"x")  # within the limit: kept pending
                    if case == "one message too large":
                        await ws.send_bytes(_encode_header(8, 0, limit * 2) + b"x")
                    else:
                        await ws.send_bytes(_encode_header(8, 0, limit // 2) + b"x")
                        await ws.send_bytes(_encode_header(9, 0, limit // 2) + b"x")
                assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await asyncio.sleep(0.2)
            async with http.ws_connect(page, origin=own) as ws:  # the server is still up
                assert (await greet(ws))["result"]["clientID"]

    run_served(tmp_path, body)


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_local_hosts(host, local):
    assert is_local(host) is local


def test_serve_refuses_bad_options_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            (["serve", "--data", str(tmp_path), "--host", "0.0.0.0"], "--token"),
            (["serve", "--data", str(tmp_path / "missing")], "is not a folder"),
            (["serve", "--data", str(tmp_path), "../outside.nii.gz"], "outside the data folder"),
            (["serve", "--data", str(tmp_path), "notes.txt"], "notes.txt"),
            (["serve", "--data", str(tmp_path), "--port", str(busy)], "choose another --port"),
        ]
        for argv, message in cases:
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("shapeprior: error: ") and message in err and err.count("\n") == 1, err
