"""``[core] hostname_callable`` of the e2e Celery workers: each reports its own name as its hostname.

Airflow records the hostname of the machine a task instance ran on; both workers of the e2e deployment
run on one machine, so each is given a name of its own in ``OCTOPUSX_E2E_WORKER_HOSTNAME`` instead.
"""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["OCTOPUSX_E2E_WORKER_HOSTNAME"]
