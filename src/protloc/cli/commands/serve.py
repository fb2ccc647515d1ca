"""``protloc serve RUN``: the web app (page + JSON API) for one trained run folder."""

from __future__ import annotations

import ipaddress
import sys

from protloc.cli.main import new_command
from protloc.cli.options import declare_paths, nonneg_int, port, positive_int, positive_number, run_folder
from protloc.core.errors import InputError


def register(sub) -> None:
    p = new_command(sub, "serve", help="web app: upload images, see localizations, Grad-CAM, model card",
                    example="protloc serve runs/r1 --port 8000   # then open http://127.0.0.1:8000",
                    description="Start a local web app for a trained run folder: drop microscopy images "
                                "(PNG/TIFF/JPEG or HPA channel files) to see the predicted localizations, "
                                "probabilities against the thresholds, Grad-CAM overlays and the model card; "
                                "download a batch as CSV. JSON API: POST /predict, GET /model, GET /health; "
                                "API docs at /docs.")
    p.add_argument("run", help="trained run folder (the --out of `protloc train`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 127.0.0.1 keeps it on this computer (0.0.0.0 exposes it "
                        "to the network: only do that behind a firewall)")
    p.add_argument("--port", type=port, default=8000, help="TCP port")
    p.add_argument("--max-upload-mb", type=positive_number, default=20, help="largest accepted file")
    p.add_argument("--max-request-mb", type=positive_number, default=100, help="largest accepted request (all files)")
    p.add_argument("--max-files", type=positive_int, default=64, help="most files in one request")
    p.add_argument("--max-decoded-mb", type=positive_number, default=512,
                   help="memory the decoded pixels of one request may take, read from the file headers "
                        "before decoding (413 above)")
    p.add_argument("--max-decoded-total-mb", type=positive_number, default=768,
                   help="memory the decoded pixels of all requests at once may take (others wait, then 503)")
    p.add_argument("--header-timeout", type=positive_number, default=10,
                   help="seconds a client has to send its request line and headers (stalled clients are closed)")
    p.add_argument("--body-timeout", type=positive_number, default=30, help="longest pause (seconds) inside an upload")
    p.add_argument("--max-connections", type=positive_int, default=256,
                   help="open connections in all (the oldest idle one is closed to make room)")
    p.add_argument("--max-connections-per-client", type=positive_int, default=64,
                   help="open connections from one address")
    p.add_argument("--workers", type=positive_int, default=1, help="model calls running at the same time")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: torch's default)")
    declare_paths(p, run_folder())
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(host: str, port: int) -> None:
    """Fail early (exit 2, one line) when the address is taken or not on this computer."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"--host {host} --port {port}", expected="a free local address",
                             got=e.strerror or str(e),
                             fix="pick another --port, or stop the other server") from None


def run(args) -> int:
    from protloc.core.runfolder import RunFolder

    RunFolder(args.run).check()
    _check_address(args.host, args.port)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import uvicorn

    from protloc.web.app import create_app
    from protloc.web.guard import ConnectionLimits, guarded_protocol

    app = create_app(args.run, max_upload_mb=args.max_upload_mb, max_request_mb=args.max_request_mb,
                     max_files=args.max_files, max_decoded_mb=args.max_decoded_mb,
                     max_decoded_total_mb=args.max_decoded_total_mb, workers=args.workers)
    protocol = guarded_protocol(ConnectionLimits(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                                                 max_connections=args.max_connections,
                                                 max_per_client=args.max_connections_per_client))
    card = app.state.service.card
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"protloc: serving run '{card['run']}' ({len(card['classes'])} classes, "
          f"{len(card['channels'])} channels, {card['image_size']} px)")
    print(f"  open http://{shown}:{args.port}/   API docs: http://{shown}:{args.port}/docs   (Ctrl-C stops)")
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: other computers can reach this server; there is no "
              "login. Use --host 127.0.0.1 unless it is behind a firewall.", file=sys.stderr)
    # no uvicorn limit_concurrency: it counts open connections, so stalled ones made /health 503;
    # the guarded protocol caps connections (closing idle ones first) and times out slow clients
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5,
                server_header=False, http=protocol)
    return 0
