"""Check what users install: build the sdist and the wheel, check their metadata and contents, install
the wheel (not editable) into a fresh venv away from the checkout, and run an example DAG with it.

    .venv/bin/python scripts/check_dist.py          # what ./dev test runs after pytest
    .venv/bin/python scripts/check_dist.py --keep   # keep the temporary folder to look at

Steps, each of which fails the check:

1. ``uv build`` (the sdist, then the wheel from the sdist) with the build backend of the project's
   ``.venv`` (its lock's), and ``twine check --strict`` of both with the ``.venv``'s twine.
2. The wheel holds every file of ``airflow_octopusx/`` (modules, ``py.typed``, the simulator's
   ``sample.mp4``), ``LICENSE``, both entry points and every extra of pyproject.toml, and nothing else.
3. The sdist holds every file git tracks (LICENSE included) and no local outputs (venvs, caches,
   Airflow homes, ``.demo``, ``dist``...).
4. A fresh venv in a temporary folder gets the wheel with its ``simulator`` extra; Airflow and the other
   dependencies at the versions of the project's ``.venv``, so the check needs nothing new from the
   package index and a release made today cannot break it.
5. From that folder (so the checkout cannot be imported): the package imports from the venv, Airflow's
   providers manager sees the provider and its ``octopusx`` connection type, the ``simulator`` extra's
   requirements are installed; then ``python -m airflow_octopusx.simulator`` serves the API and
   ``airflow db migrate`` and ``airflow dags test example_octopusx_text_to_video`` (the example DAGs
   copied to a dags folder there) store an MP4.

The simulator is stopped and the folder removed however the check ends (SIGTERM and Ctrl+C included).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import IO, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "airflow_octopusx"
DAG_ID = "example_octopusx_text_to_video"
#: Path parts that are local outputs, never project files.
LOCAL_OUTPUTS = {
    ".venv",
    ".venv-airflow-oldest",
    ".demo",
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "dist",
    "build",
    "_build",
    "logs",
}
LOCAL_OUTPUT_FILES = {"airflow.cfg", "airflow.db", "webserver_config.py", ".coverage"}
LOCAL_OUTPUT_SUFFIXES = (".pyc", ".pyo", ".log", ".egg-info")


class CheckFailed(Exception):
    pass


def step(message: str) -> None:
    print(f"== {message}", flush=True)


def run(
    command: Sequence[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, raise with the end of its output."""
    argv = [str(part) for part in command]
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}".strip()[-8000:]
        raise CheckFailed(f"`{' '.join(argv)}` exited {result.returncode}:\n{output}")
    return result


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# -- what the project holds -------------------------------------------------------------------------------


def project_files(under: str = "") -> list[str]:
    """Files git tracks (and, with ``under``, untracked ones it does not ignore, as the build sees them)
    that exist in the working tree; relative POSIX paths."""
    command = ["git", "ls-files", "--cached"]
    if under:
        command += ["--others", "--exclude-standard", "--", under]
    listed = run(command, cwd=ROOT).stdout.splitlines()
    return sorted({name for name in listed if (ROOT / name).is_file()})


def project_table() -> dict[str, Any]:
    """``[project]`` of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return dict(tomllib.load(file)["project"])


def is_local_output(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        any(part in LOCAL_OUTPUTS for part in path.parts)
        or path.name in LOCAL_OUTPUT_FILES
        or path.name.endswith(LOCAL_OUTPUT_SUFFIXES)
    )


# -- the archives -------------------------------------------------------------------------------------------


def freeze(uv: Path, scratch: Path) -> Path:
    """The versions of the project's ``.venv`` (its lock's), less its editable install of this checkout:
    what the build and the fresh venv get, so the check takes nothing new from the package index."""
    frozen = run([uv, "pip", "freeze", "--exclude-editable", "--python", sys.executable]).stdout
    constraints = scratch / "constraints.txt"
    constraints.write_text(frozen)
    return constraints


def build(uv: Path, dist: Path, constraints: Path) -> tuple[Path, Path]:
    step("uv build: the sdist, then the wheel from the sdist")
    run([uv, "build", "--build-constraints", constraints, "--out-dir", dist, ROOT], cwd=ROOT)
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    step(f"twine check --strict {sdist.name} {wheel.name}")
    twine = [Path(sys.executable).parent / "twine", "--no-color", "check", "--strict", sdist, wheel]
    # Wide enough that twine prints one line per file.
    print(run(twine, env={**os.environ, "COLUMNS": "300"}).stdout.strip())
    return sdist, wheel


def check_wheel(wheel: Path) -> None:
    step(f"contents of {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [dist_info] = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    missing = [
        name for name in project_files(PACKAGE) if name.startswith(f"{PACKAGE}/") and name not in names
    ]
    expect(not missing, f"the wheel lacks package files: {missing}")
    for required in (
        f"{PACKAGE}/py.typed",
        f"{PACKAGE}/simulator/sample.mp4",
        f"{dist_info}/licenses/LICENSE",
    ):
        expect(required in names, f"the wheel lacks {required}")
    strays = sorted(name for name in names if not name.startswith((f"{PACKAGE}/", f"{dist_info}/")))
    expect(not strays, f"the wheel holds files outside the package: {strays}")
    outputs = sorted(name for name in names if is_local_output(name))
    expect(not outputs, f"the wheel holds local outputs: {outputs}")
    project = project_table()
    for group, points in project["entry-points"].items():
        for name, target in points.items():
            expect(
                f"[{group}]" in entry_points and f"{name} = {target}" in entry_points,
                f"the wheel lacks the entry point {group}: {name} = {target}",
            )
    provided = {
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")
    }
    expected = set(project["optional-dependencies"])
    expect(
        provided == expected, f"the wheel's extras {sorted(provided)} are not pyproject's {sorted(expected)}"
    )
    expect("License-Expression: Apache-2.0" in metadata, "the wheel's metadata names no Apache-2.0 license")
    print(f"   {len(names)} files: every file of the package, LICENSE, the entry points, the extras")


def check_sdist(sdist: Path) -> None:
    step(f"contents of {sdist.name}")
    with tarfile.open(sdist) as archive:
        members = [member.name for member in archive.getmembers() if member.isfile()]
    prefix = members[0].split("/")[0]
    names = {name.removeprefix(f"{prefix}/") for name in members}
    missing = [name for name in project_files() if name not in names]
    expect(
        not missing,
        f"the sdist lacks project files (add them to [tool.hatch.build.targets.sdist]): {missing}",
    )
    for required in ("LICENSE", "PKG-INFO", "pyproject.toml", "README.md", f"{PACKAGE}/py.typed"):
        expect(required in names, f"the sdist lacks {required}")
    outputs = sorted(name for name in names if is_local_output(name))
    expect(not outputs, f"the sdist holds local outputs: {outputs[:20]}")
    print(f"   {len(names)} files: every file git tracks, no local outputs")


# -- the installed wheel ------------------------------------------------------------------------------------


def install(uv: Path, wheel: Path, scratch: Path, constraints: Path) -> Path:
    step("a fresh venv with the wheel and its simulator extra")
    venv = scratch / "venv"
    run([uv, "venv", "--quiet", "--python", sys.executable, venv])
    python = venv / "bin" / "python"
    requirement = f"airflow-provider-octopusx[simulator] @ {wheel.as_uri()}"
    run([uv, "pip", "install", "--quiet", "--python", python, "--constraint", constraints, requirement])
    return python


_INSTALLED_CHECK = """
import importlib.metadata, json, sys, warnings
from packaging.requirements import Requirement
import airflow_octopusx
from airflow.providers_manager import ProvidersManager

dist = importlib.metadata.distribution("airflow-provider-octopusx")
def in_simulator_extra(requirement):
    marker = requirement.marker
    if marker is None:
        return False
    return marker.evaluate({"extra": "simulator"}) and not marker.evaluate({"extra": ""})

simulator_requirements = [r for r in map(Requirement, dist.requires or ()) if in_simulator_extra(r)]
missing = []
for requirement in simulator_requirements:
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or not requirement.specifier.contains(version, prereleases=True):
        missing.append(str(requirement))
manager = ProvidersManager()
provider = manager.providers.get("airflow-provider-octopusx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    hook = manager.hooks.get("octopusx")
print(json.dumps({
    "module": airflow_octopusx.__file__,
    "version": airflow_octopusx.__version__,
    "simulator_requirements": [str(requirement) for requirement in simulator_requirements],
    "missing": missing,
    "provider_version": provider.version if provider else None,
    "hook": hook.hook_class_name if hook else None,
}))
"""


def check_installed(python: Path, scratch: Path, env: dict[str, str]) -> None:
    step("the installed package, its extra and its provider entry point, from outside the checkout")
    output = run([python, "-c", _INSTALLED_CHECK], cwd=scratch, env=env).stdout
    found = json.loads(output.strip().splitlines()[-1])
    module = Path(found["module"])
    expect(module.is_relative_to(python.parent.parent), f"airflow_octopusx was imported from {module}")
    version = project_table()["version"]
    expect(found["version"] == version, f"the installed package says {found['version']}, pyproject {version}")
    expect(bool(found["simulator_requirements"]), "the installed metadata has no simulator extra")
    expect(not found["missing"], f"the simulator extra's requirements are not installed: {found['missing']}")
    expect(
        found["provider_version"] == version, f"Airflow's providers manager sees {found['provider_version']}"
    )
    expect(
        found["hook"] == f"{PACKAGE}.hooks.octopusx.OctopusXHook",
        f"Airflow lists no importable hook for the connection type octopusx: {found['hook']}",
    )
    print(f"   {module}; provider {version}; connection type octopusx -> {found['hook']}")


@contextmanager
def simulator(python: Path, scratch: Path, env: dict[str, str]) -> Iterator[str]:
    """``python -m airflow_octopusx.simulator`` from the venv; yields its connection as JSON."""
    process = subprocess.Popen(
        [python, "-m", f"{PACKAGE}.simulator", "--port", "0", "--generation-seconds", "3"],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_forward, args=(process.stdout, lines), daemon=True).start()
    try:
        printed: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("export AIRFLOW_CONN_OCTOPUSX_DEFAULT=") for line in printed):
            try:
                printed.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise CheckFailed(
                    f"the simulator printed no connection in 60 s:\n{''.join(printed)}"
                ) from None
        [export] = [line for line in printed if line.startswith("export ")]
        yield export.split("=", 1)[1].strip().strip("'")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _forward(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    for line in stream or ():
        lines.put(line)


def run_example_dag(python: Path, scratch: Path, env: dict[str, str]) -> None:
    dags = scratch / "dags"
    shutil.copytree(ROOT / "example_dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    videos = scratch / "videos"
    airflow = python.parent / "airflow"
    with simulator(python, scratch, env) as connection:
        env = {
            **env,
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW_CONN_OCTOPUSX_DEFAULT": connection,
            "OCTOPUSX_OUTPUT_DIR": f"{videos}/",
        }
        step(f"the installed simulator serves {json.loads(connection)['host']}; airflow db migrate")
        run([airflow, "db", "migrate"], cwd=scratch, env=env)
        step(f"airflow dags test {DAG_ID}")
        run([airflow, "dags", "test", DAG_ID], cwd=scratch, env=env)
    stored = sorted(videos.glob("*.mp4"))
    expect(len(stored) == 1, f"the DAG run stored {len(stored)} MP4s in {videos}, not one")
    head = stored[0].read_bytes()[:12]
    expect(head[4:8] == b"ftyp", f"{stored[0].name} is not an MP4 (starts {head!r})")
    print(f"   stored {stored[0].name}, {stored[0].stat().st_size} bytes")


# -- the whole check ----------------------------------------------------------------------------------------


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # runs the cleanup of every block on the way out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        uv = Path(shutil.which("uv") or "uv")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="octopusx-dist-check-")).resolve()
    expect(not scratch.is_relative_to(ROOT), f"the temporary folder {scratch} is inside the checkout")
    # Nothing of the checkout or of the caller's Airflow setup may leak into the installed package's runs.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV") and not name.startswith("AIRFLOW")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(scratch / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PATH": f"{scratch / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    try:
        constraints = freeze(uv, scratch)
        sdist, wheel = build(uv, scratch / "dist", constraints)
        check_wheel(wheel)
        check_sdist(sdist)
        python = install(uv, wheel, scratch, constraints)
        check_installed(python, scratch, env)
        run_example_dag(python, scratch, env)
    except CheckFailed as error:
        print(f"DIST CHECK FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"== the wheel and the sdist are what users should install ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
