"""What the benchmarks share, one module per subject; none imports Airflow, so a script can set
``AIRFLOW_HOME`` and the connection variables first and import Airflow only after that.

- ``environment``: the Airflow home and connections, logs to a file, open-file limit, common flags.
- ``product``: which ``airflow_octopusx`` is measured (a git ref exported, or the working tree).
- ``proc``: CPU, memory and machine load from ``/proc``; open TCP connections to a port.
- ``loop_lag``: event-loop lag.
- ``tables``: percentiles and the printed tables.
- ``simulator``: the simulator in its own process, and its controls.

The task-context stand-ins the benchmarks pass to ``execute()`` are the tests' own, in
``tests/support/task_context.py``.
"""

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parents[2]
