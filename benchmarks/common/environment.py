"""The process a benchmark runs in: Airflow's home and connections, logs, limits, common flags."""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path
from typing import Any


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (inherited by children); thousands of
    waiting triggers may each hold a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--product-ref`` and ``--wait-quiet``, which every measuring script takes."""
    parser.add_argument(
        "--product-ref",
        help="measure airflow_octopusx as of this git ref (exported to a temp dir), not the working tree",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=180,
        help="wait up to this many seconds for other processes to go quiet first (default: %(default)s)",
    )


def prepare_airflow_environment(home: Path, connections: dict[str, dict[str, Any]]) -> None:
    """Point Airflow at a throw-away home and export connections; call before anything imports Airflow."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(home / "dags")
    for conn_id, connection in connections.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)


def log_to(path: str) -> None:
    """Send this process's stdout and stderr to a file (Airflow's and the operator's logs among them)."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
