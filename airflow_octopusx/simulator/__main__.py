"""``python -m airflow_octopusx.simulator``: serve the simulator in the foreground for demos."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from airflow_octopusx.simulator.server import Simulator
from airflow_octopusx.simulator.state import FLAVOURS, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_octopusx.simulator",
        description="Serve a local OctopusX API (and its CDN) until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="API port (default: %(default)s)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port, 0 for any free one (default)")
    parser.add_argument("--api-key", default="sim-key", help="accepted bearer key (default: %(default)s)")
    parser.add_argument(
        "--generation-seconds",
        type=float,
        default=6.0,
        help="time to complete a video (default: %(default)s)",
    )
    parser.add_argument(
        "--url-ttl-seconds",
        type=float,
        default=3600.0,
        help="lifetime of video_url links (default: %(default)s)",
    )
    parser.add_argument(
        "--video-size-bytes",
        type=int,
        default=0,
        help="pad served MP4s to this size (default: the bare sample)",
    )
    parser.add_argument(
        "--content-redirect",
        action="store_true",
        help="answer /v1/videos/{id}/content with a 302 to the signed CDN link",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="probability that a request meets a random fault (default: %(default)s)",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the random faults (default: 0)")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=2.0,
        help="how long a random 'slow' fault holds a request (default: %(default)s)",
    )
    parser.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="doc",
        help="answer as the API doc says or as the new-api gateway does (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            generation_seconds=args.generation_seconds,
            url_ttl_seconds=args.url_ttl_seconds,
            video_size_bytes=args.video_size_bytes,
            content_redirect=args.content_redirect,
            fault_rate=args.fault_rate,
            fault_seed=args.fault_seed,
            slow_seconds=args.slow_seconds,
            flavour=args.flavour,
        )
    except ValueError as error:
        parser.error(str(error))
    simulator = Simulator(
        host=args.host, port=args.port, cdn_port=args.cdn_port, api_key=args.api_key, settings=settings
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with simulator:
        connection = {"conn_type": "octopusx", "host": simulator.api_url, "password": simulator.api_key}
        print(f"OctopusX simulator API: {simulator.api_url}")
        print(f"OctopusX simulator CDN: {simulator.cdn_url}")
        print(f"export AIRFLOW_CONN_OCTOPUSX_DEFAULT='{json.dumps(connection)}'")
        print("Press Ctrl+C to stop.", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
