"""Soak: many videos through the provider's real operators and trigger, against a simulator (in its own
process) that faults a share of all requests at random; prints the figures and exits 1 if a guarantee
broke: no video paid for twice or left unstored, each stored byte-exact unless its submission's answer
was lost (then its task must fail loudly).

    .venv/bin/python -m benchmarks.soak                  # 500 videos, 20 % of requests faulted
    .venv/bin/python -m benchmarks.soak --videos 100 --fault-rate 0.3 --seed 7
    .venv/bin/python -m benchmarks.soak --batch-size 100   # GenerateVideosOperator, 5 batches of 100

The driver, :func:`tests.support.soak.run_soak`, is the one ``tests/test_soak.py`` runs at CI size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common.environment import prepare_airflow_environment
from benchmarks.common.proc import load_average
from benchmarks.common.product import product_fingerprint
from benchmarks.common.simulator import SimulatorProcess
from tests.support.soak import CONN_ID, BatchSoakReport, SoakConfig, SoakReport, run_batch_soak, run_soak


def _parser() -> argparse.ArgumentParser:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=defaults.videos)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--seed", type=int, default=defaults.fault_seed)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--retries", type=int, default=defaults.task_retries, help="task retries")
    parser.add_argument("--video-size", type=int, default=defaults.video_size_bytes, help="bytes")
    parser.add_argument(
        "--unambiguous-posts",
        action="store_true",
        help="POSTs meet only faults that say no work was done (429, 5xx), never a reset or timeout",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="run GenerateVideosOperator in batches of this many videos (0: a submit and a download task "
        "per video); --concurrency then counts batches",
    )
    parser.add_argument(
        "--content-downloads",
        action="store_true",
        help="no video_url: every download goes through /content and its redirect to the CDN",
    )
    return parser


def main() -> int:
    args = _parser().parse_args()
    config = SoakConfig(
        videos=args.videos,
        fault_rate=args.fault_rate,
        fault_seed=args.seed,
        concurrency=args.concurrency,
        task_retries=args.retries,
        video_size_bytes=args.video_size,
        empty_video_url=args.content_downloads,
        unambiguous_posts=args.unambiguous_posts,
    )
    with tempfile.TemporaryDirectory(prefix="octopusx-soak-") as scratch, SimulatorProcess() as simulator:
        # Before Airflow is first imported (by run_soak): its home, quiet logs, and the connection.
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
        prepare_airflow_environment(Path(scratch) / "airflow", {CONN_ID: simulator.control.connection})
        product = product_fingerprint("hooks/octopusx.py", "operators/octopusx.py", "operators/batch.py")
        print(f"product: {product}", flush=True)
        folder = Path(scratch) / "videos"
        report: SoakReport | BatchSoakReport = (
            run_batch_soak(simulator.control.api_url, config, folder, args.batch_size)
            if args.batch_size
            else run_soak(simulator.control.api_url, config, folder)
        )
        print(report.format())
        print(f"  machine: {load_average()}")
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
