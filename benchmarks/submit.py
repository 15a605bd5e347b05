"""Submit latency and import cost: ``SubmitVideoOperator.execute()`` up to its deferral, against one raw
httpx POST + GET doing the same work, and what importing the operator costs a DAG file.

A deferrable submit should cost about the two requests it makes (create the video, check it once) and
nothing more, and a DAG file that imports the operator is parsed again and again by the dag processor,
so the import must stay light: no web server, codec or object-store backend may come with it.

    .venv/bin/python -m benchmarks.submit
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common.environment import add_measurement_arguments, log_to, prepare_airflow_environment
from benchmarks.common.proc import load_average, wait_until_quiet
from benchmarks.common.product import product_fingerprint, use_product_ref
from benchmarks.common.simulator import VIDEO_REQUEST, SimulatorProcess
from benchmarks.common.tables import median, print_table, ratio
from tests.support.task_context import minimal_context

OPERATOR_MODULE = "airflow_octopusx.operators.octopusx"
PRODUCT_FILES = ("operators/octopusx.py", "hooks/octopusx.py", "models.py")
# Must not come with the operator at DAG-parse time: the simulator's server, the test-only codec, and
# object-store backends (fsspec itself comes with Airflow's ObjectStoragePath).
HEAVY_MODULES = (
    "uvicorn",
    "starlette",
    "av",
    "s3fs",
    "gcsfs",
    "adlfs",
    "aiobotocore",
    "botocore",
    "boto3",
    "moto",
    "airflow_octopusx.simulator",
)
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


# -- submit latency -------------------------------------------------------------------------------------


def time_operator(simulator_url: str) -> float:
    """Seconds from ``execute()`` start until it raises ``TaskDeferred``."""
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_octopusx.operators.octopusx import SubmitVideoOperator

    operator = SubmitVideoOperator(
        task_id="submit_video", prompt=VIDEO_REQUEST["prompt"], seconds=8, deferrable=True
    )
    context = minimal_context()
    started = time.perf_counter()
    try:
        operator.execute(context)
    except TaskDeferred:
        return time.perf_counter() - started
    raise RuntimeError(f"execute() returned without deferring; is the simulator at {simulator_url} slow?")


def time_raw(api_url: str, api_key: str, client: httpx.Client | None = None) -> float:
    """Seconds for one POST /v1/videos and one GET of the new video, in a new client unless one is given."""
    started = time.perf_counter()
    own = client is None
    client = client or httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        created = client.post("/v1/videos", json=VIDEO_REQUEST)
        created.raise_for_status()
        client.get(f"/v1/videos/{created.json()['id']}").raise_for_status()
    finally:
        if own:
            client.close()
    return time.perf_counter() - started


# -- import cost --------------------------------------------------------------------------------------------


@dataclass
class ImportTree:
    """One ``python -X importtime`` run: every module with its self and cumulative microseconds."""

    entries: list[tuple[str, int, int, int]]  # name, self us, cumulative us, depth

    @classmethod
    def measure(cls, statement: str) -> ImportTree:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True
        )
        entries = []
        for line in result.stderr.splitlines():
            match = _IMPORTTIME.match(line)
            if match:
                own, cumulative, indent, name = match.groups()
                entries.append((name, int(own), int(cumulative), len(indent) // 2))
        return cls(entries)

    @property
    def total_ms(self) -> float:
        """Everything the statement imported: the sum of the top-level imports' cumulative times."""
        return sum(cumulative for _, _, cumulative, depth in self.entries if depth == 0) / 1000

    @property
    def modules(self) -> set[str]:
        return {name for name, *_ in self.entries}

    def own_modules(self, prefix: str = "airflow_octopusx") -> list[tuple[str, float, float]]:
        """Our modules by self time: name, self ms, cumulative ms."""
        ours = [(n, own / 1000, cum / 1000) for n, own, cum, _ in self.entries if n.split(".")[0] == prefix]
        return sorted(ours, key=lambda entry: -entry[1])

    def importer_chain(self, module: str) -> list[str]:
        """Who imported ``module`` first: its ancestors in the tree, outermost first."""
        # importtime prints a module after its children, so a module's parent is the next shallower line.
        for index, (name, _, _, depth) in enumerate(self.entries):
            if name != module:
                continue
            chain, wanted = [], depth - 1
            for parent, _, _, parent_depth in self.entries[index + 1 :]:
                if parent_depth == wanted:
                    chain.append(parent)
                    wanted -= 1
            return list(reversed(chain))
        return []

    def cumulative_ms(self, module: str) -> float:
        """The module's cumulative time; a package re-entered while it initialises is listed twice (the
        inner line covers only the re-entry), so the larger figure is the real one."""
        return max((cum / 1000 for name, _, cum, _ in self.entries if name == module), default=float("nan"))


def import_cost(runs: int) -> dict[str, Any]:
    """Import the operator alone, and after ``airflow.sdk`` as a DAG file does; medians over ``runs``."""
    alone = [ImportTree.measure(f"import {OPERATOR_MODULE}") for _ in range(runs)]
    in_dag = [
        ImportTree.measure(f"from airflow.sdk import DAG; import {OPERATOR_MODULE}") for _ in range(runs)
    ]
    typical = sorted(alone, key=lambda tree: tree.total_ms)[runs // 2]
    heavy = {
        module: typical.importer_chain(module)
        for module in sorted(typical.modules)
        if any(module == heavy or module.startswith(f"{heavy}.") for heavy in HEAVY_MODULES)
    }
    sdk_modules = set.intersection(*(tree.modules - {OPERATOR_MODULE} for tree in in_dag))
    return {
        "alone_ms": median([tree.total_ms for tree in alone]),
        "sdk_ms": median([tree.cumulative_ms("airflow.sdk") for tree in in_dag]),
        "added_ms": median([tree.cumulative_ms(OPERATOR_MODULE) for tree in in_dag]),
        "added_modules": sorted(
            {module for tree in in_dag for module in tree.modules} - _before_operator(in_dag[0])
        ),
        "sdk_module_count": len(sdk_modules),
        "own": typical.own_modules(),
        "heavy": heavy,
        "fsspec_chain": typical.importer_chain("fsspec"),
    }


def _before_operator(tree: ImportTree) -> set[str]:
    """Modules loaded before the operator module started importing (importtime lists them first)."""
    names = [name for name, *_ in tree.entries]
    start = names.index(OPERATOR_MODULE)
    # The operator's own subtree precedes its line; it starts after the previous top-level entry.
    depth_zero_before = [i for i, (_, _, _, depth) in enumerate(tree.entries[:start]) if depth == 0]
    first_child = depth_zero_before[-1] + 1 if depth_zero_before else 0
    return set(names[:first_child])


# -- running and reporting -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=30, help="timed submits of each kind (default: %(default)s)"
    )
    parser.add_argument(
        "--import-runs",
        type=int,
        default=5,
        help="python -X importtime runs of each kind (default: %(default)s)",
    )
    add_measurement_arguments(parser)
    return parser


def measure_submits(api_url: str, api_key: str, runs: int, log_file: str) -> dict[str, Any]:
    """In a fresh process (logs to a file): one cold run of each, then ``runs`` alternating rounds."""
    log_to(log_file)
    cold = {"ours": time_operator(api_url), "raw": time_raw(api_url, api_key)}
    timings: dict[str, list[float]] = {"ours": [], "raw": [], "raw_reused": []}
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}) as client:
        for _ in range(runs):
            timings["ours"].append(time_operator(api_url))
            timings["raw"].append(time_raw(api_url, api_key))
            timings["raw_reused"].append(time_raw(api_url, api_key, client))
    return {"cold": cold, "timings": timings, "code": product_fingerprint(*PRODUCT_FILES)}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="octopusx-bench-submit-"))
    if args.product_ref:
        commit = use_product_ref(args.product_ref, work / "product")
        print(f"Measuring airflow_octopusx at {args.product_ref} (commit {commit})")
    print(f"Machine: {os.cpu_count()} cores, {load_average()}; {wait_until_quiet(args.wait_quiet)}")
    print(f"Logs in {work}")
    # Long enough that the one status check finds the video still rendering, so the operator defers.
    with SimulatorProcess(generation_seconds=3600) as simulator:
        control = simulator.control
        prepare_airflow_environment(work / "airflow", {"octopusx_default": control.connection})
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            measured = pool.submit(
                measure_submits, control.api_url, control.api_key, args.runs, str(work / "submit.log")
            ).result()
        stats = control.stats()
    timings, cold = measured["timings"], measured["cold"]
    ours_ms, raw_ms, reused_ms = (1000 * median(timings[key]) for key in ("ours", "raw", "raw_reused"))
    print_table(
        f"Submit to deferral, median of {args.runs} alternating rounds, simulator on loopback",
        ("what", "median ms", "first run ms", "ours / this"),
        [
            (
                "SubmitVideoOperator.execute() until TaskDeferred",
                f"{ours_ms:.2f}",
                f"{1000 * cold['ours']:.1f}",
                "",
            ),
            (
                "raw httpx: new Client, POST + GET",
                f"{raw_ms:.2f}",
                f"{1000 * cold['raw']:.1f}",
                ratio(ours_ms, raw_ms),
            ),
            ("raw httpx: one reused Client, POST + GET", f"{reused_ms:.2f}", "", ratio(ours_ms, reused_ms)),
        ],
    )
    print(f"  simulator saw {stats['posts']} POSTs, {stats['gets']} GETs")
    print(f"  ran {measured['code']}")

    print(f"  python -X importtime, {args.import_runs} runs of each ...", flush=True)
    cost = import_cost(args.import_runs)
    print_table(
        f"Import time (python -X importtime, median of {args.import_runs})",
        ("statement", "ms"),
        [
            (f"import {OPERATOR_MODULE}  (total, Airflow included)", f"{cost['alone_ms']:.0f}"),
            ("from airflow.sdk import DAG  (what a DAG file imports anyway)", f"{cost['sdk_ms']:.0f}"),
            ("  then our operator module on top of it", f"{cost['added_ms']:.1f}"),
        ],
    )
    print_table(
        "Our modules by self time (import of the operator alone, median run)",
        ("module", "self ms", "cumulative ms"),
        [(name, f"{own:.1f}", f"{cumulative:.1f}") for name, own, cumulative in cost["own"][:10]],
    )
    added = [module for module in cost["added_modules"] if not module.startswith("airflow_octopusx")]
    print(f"\nModules our operator adds after `from airflow.sdk import DAG`, besides ours: {len(added)}")
    print("  " + (", ".join(added) if added else "none"))
    if cost["heavy"]:
        print("Heavy modules imported with the operator (NOT MET):")
        for module, chain in cost["heavy"].items():
            print(f"  {module}: via {' -> '.join(chain) or 'the statement itself'}")
    else:
        print(f"Heavy modules imported with the operator: none of {', '.join(HEAVY_MODULES)} (met)")
    print(f"fsspec is first imported via: {' -> '.join(cost['fsspec_chain']) or 'not imported'}")
    print(f"\nMachine: {load_average()} at end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
