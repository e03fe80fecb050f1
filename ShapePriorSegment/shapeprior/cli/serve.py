"""``serve``: the browser face (extra ``[web]``): the delineation loop in a web page on Slicer's views."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from ..errors import InputError
from .options import number


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the delineation loop in a web browser (needs the [web] extra)",
        description="Serve a web page with Slicer's red, yellow, green and 3D views: open an image (from the data "
        "folder, an upload or the sample CT), draw contours, fit, refit at the suggested plane, refine a mask or fit "
        "an image, download the results. Binds to 127.0.0.1 unless --host says otherwise; another host needs --token.",
    )
    p.add_argument("image", nargs="?", help="an image in the data folder to open at start")
    p.add_argument("--data", default=".", help="the folder the page may open files from (default: here)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=number(int, (1, 65535)), default=8080, help="port (default: 8080)")
    p.add_argument("--token", help="a secret the page's address must carry; required with a non-local --host "
                   "('auto': a random one, printed)")
    p.add_argument("--max-upload-mb", type=number(int, (1, 65536)), default=512,
                   help="upload size limit (default: 512)")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..web import access
        from ..web.files import check_image, confined
    except ImportError as exc:  # aiohttp comes with trame
        raise _missing_extra(exc) from None
    data = Path(args.data).resolve()
    if not data.is_dir():
        raise InputError(args.data, "is not a folder: --data names the folder the page may open files from")
    if args.image:
        check_image(confined(data, args.image))
    token = access.new_token() if args.token == "auto" else args.token
    if not access.is_local(args.host):
        if not token:
            raise InputError(None, f"--host {args.host} lets other machines connect: give --token SECRET (or 'auto'), "
                                   "or put the page behind a reverse proxy that authenticates and keep 127.0.0.1")
        print(f"shapeprior: warning: listening on {args.host}: anyone who can reach port {args.port} and has the "
              "token can use this session", file=sys.stderr)
    _check_port(args.host, args.port)
    try:
        from ..web.app import serve
    except ImportError as exc:
        raise _missing_extra(exc) from None
    query = f"?token={token}" if token else ""
    address = f"[{args.host}]" if ":" in args.host else args.host
    print(f"shapeprior: open http://{address}:{args.port}/{query} "
          f"(data folder {data}; Ctrl-C stops)", flush=True)
    serve(data, args.image, args.host, args.port, args.max_upload_mb, token=token)
    return 0


def _missing_extra(exc: ImportError) -> InputError:
    return InputError(None, f"serve needs the web extra ({exc.name} is missing): pip install 'shapeprior[web]'")


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(None, f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port") from None
