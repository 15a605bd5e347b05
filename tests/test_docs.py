"""Every code block in README.md and docs/*.md is run, checked against the code, or is an example DAG.

How each fenced block is checked, by language:

- ``python``: a block whose first line is ``# from example_dags/<file>.py`` must be lines of that file,
  in order. A block that defines a DAG is written into the dags folder, parsed like the DAG processor
  does (no import errors, every ``dag_id`` found) and serialised; preceded by ``<!-- docs-test: run -->``
  (or ``run <dag_id> ...``) its DAGs also run with ``dag.test()`` against the simulator and must
  succeed. A block that defines ``test_*`` functions runs under pytest. Any other block is executed in
  a fresh namespace and working directory, with ``octopusx_default`` pointing at the simulator; a
  ``print(...)  # expected`` comment must match what it printed.
- ``bash``/``sh``/``console``: each command must be one that this test or CI runs: ``./dev test``
  (what CI runs), ``./dev demo`` (an example DAG that tests/example_dags runs too), ``./dev lock`` (its
  locks are checked by tests/test_test_environments.py), ``pip install`` of this package (by name, from
  the checkout or as the wheel of this version in ``dist/``) or of an Airflow version that a lock in
  ``requirements/`` pins (alone with Airflow's own constraints file of that version), ``uv build``,
  ``python -m build`` and ``twine check --strict``/``twine upload`` of ``dist/*`` (what
  ``scripts/check_dist.py`` in ``./dev test`` builds and checks; the upload is a release, never run
  here), ``export`` of an OctopusX connection or of a real Airflow option, ``python -m
  airflow_octopusx.simulator`` (started here and stopped once it prints its connection), ``airflow db
  migrate``, ``airflow dags test`` of a DAG that exists, and ``curl`` to the simulator's controls (sent
  here to a running simulator). Anything else fails, so the docs cannot drift.
- ``json``, ``yaml``, ``ini``: must parse; an ``ini`` option of an Airflow section must exist.
- ``text``: free, unless preceded by ``<!-- docs-test: message -->``: then each line must be a message
  the package's code can produce (it matches a string literal or f-string of ``airflow_octopusx``).

Besides the blocks: the parameter, flag and settings tables are compared with the code, relative links
and their anchors must resolve, and the changelog's latest version is the package's.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import dataclasses
import inspect
import io
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

from airflow_octopusx import __version__
from airflow_octopusx.simulator import Simulator
from tests.conftest import REPO, load_dags, xcom_values

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Where DAG blocks are written while this module runs: inside the dags folder, as dag.test() needs, and
# named _build, which ruff excludes by default, so a lint run at the same moment skips them.
DOC_DAGS_ROOT = REPO / "tests" / "dags" / "_build"
OUTPUT_ROOT = "/tmp/octopusx/"


# -- reading the docs ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(?P<what>.*?)\s*-->$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str
    directive: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def stem(self) -> str:
        return re.sub(r"\W", "_", f"{self.path.stem}_{self.line}").lower()


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = index + 1
        while end < len(lines) and not re.fullmatch(
            rf" *{re.escape(fence[0])}{{{len(fence)},}} *", lines[end]
        ):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path.relative_to(REPO)}:{index + 1}: code block is never closed")
        body = [line[indent:] if line[:indent].strip() == "" else line for line in lines[index + 1 : end]]
        before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        directive = _DIRECTIVE.match(before)
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                language=(opening["info"].split() or [""])[0].lower(),
                code="\n".join(body) + "\n",
                directive=directive["what"] if directive else "",
            )
        )
        index = end + 1
    return blocks


BLOCKS = [block for path in DOC_FILES for block in read_blocks(path)]
_DAG_DEFINITION = re.compile(r"\bDAG\(|@dag\b")
_EXAMPLE_EXCERPT = re.compile(r"# from (example_dags/\w+\.py)\s*$")


def defines_dag(block: Block) -> bool:
    return block.language == "python" and bool(_DAG_DEFINITION.search(block.code))


def dag_ids_in(code: str) -> list[str]:
    """DAG ids as written in a block or file: ``dag_id="..."`` or ``DAG("...", ...)``."""
    return re.findall(r"""(?:dag_id=|\bDAG\(\s*)["']([\w.-]+)["']""", code)


DAG_BLOCKS = [
    block for block in BLOCKS if defines_dag(block) and not _EXAMPLE_EXCERPT.match(block.code.split("\n")[0])
]


# -- python blocks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc_dag_files() -> Iterator[dict[str, Path]]:
    """Every DAG block as a file in the dags folder, all at once, so one parse of the folder sees them."""
    folder = DOC_DAGS_ROOT / f"docs_{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    files = {}
    for block in DAG_BLOCKS:
        files[block.where] = folder / f"doc_{block.stem}.py"
        files[block.where].write_text(f"# {block.where}, written by tests/test_docs.py\n{block.code}")
    try:
        yield files
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another session still has a folder there
            DOC_DAGS_ROOT.rmdir()


@pytest.fixture(scope="module")
def runnable_doc_dags(doc_dag_files: dict[str, Path], airflow_db: None) -> dict[str, Path]:
    """Airflow 3.2+ serialises a DAG in dag.test() itself; 3.1 needs it in the database first."""
    if Version(AIRFLOW_VERSION) < Version("3.2"):
        subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "reserialize"], check=True, capture_output=True
        )
    return doc_dag_files


def serialise_round_trip(dag: Any) -> None:
    try:
        from airflow.serialization.serialized_objects import DagSerialization as serializer
    except ImportError:  # Airflow < 3.3
        from airflow.serialization.serialized_objects import SerializedDAG as serializer
    serializer.from_dict(serializer.to_dict(dag))


def check_dag_block(block: Block, request: pytest.FixtureRequest) -> None:
    files = request.getfixturevalue("doc_dag_files")
    bag = load_dags(files[block.where])
    assert not bag.import_errors, f"{block.where}: the DAG does not import:\n{bag.import_errors}"
    written = dag_ids_in(block.code)
    assert written, f"{block.where}: defines a DAG without a literal dag_id"
    assert sorted(bag.dag_ids) == sorted(written), f"{block.where}: parsed {bag.dag_ids}, wrote {written}"
    for dag_id in written:
        serialise_round_trip(bag.dags[dag_id])
    if not block.directive.startswith("run"):
        return
    request.getfixturevalue("runnable_doc_dags")
    simulator: Simulator = request.getfixturevalue("octopusx_conn")
    simulator.configure(generation_seconds=0)
    to_run = block.directive.split()[1:] or written
    for dag_id in to_run:
        run = bag.dags[dag_id].test()
        stored = [
            value
            for value in xcom_values(run, "return_value").values()
            if isinstance(value, str) and value.startswith(f"file://{OUTPUT_ROOT}")
        ]
        for uri in stored:
            Path(uri.removeprefix("file://")).unlink(missing_ok=True)
        assert run.state == "success", f"{block.where}: dag.test() of {dag_id} ended {run.state}"


def check_example_excerpt(block: Block, source_name: str) -> None:
    source = REPO / source_name
    assert source.is_file(), f"{block.where}: {source_name} does not exist"
    source_lines = [line.rstrip() for line in source.read_text().splitlines()]
    position = 0
    for line in block.code.splitlines()[1:]:
        if not line.strip():
            continue
        try:
            position = source_lines.index(line.rstrip(), position) + 1
        except ValueError:
            pytest.fail(
                f"{block.where}: {line.strip()!r} is not in {source_name} (after the lines before it)"
            )


def run_pytest_block(block: Block, tmp_path: Path) -> None:
    module = tmp_path / f"test_doc_{block.stem}.py"
    module.write_text(block.code)
    expected = len(re.findall(r"^def test_", block.code, re.MULTILINE))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.where}: its tests fail:\n{result.stdout}\n{result.stderr}"
    assert f"{expected} passed" in result.stdout, (
        f"{block.where}: expected {expected} tests:\n{result.stdout}"
    )


_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[")


def run_python_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    request.getfixturevalue("octopusx_conn")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            exec(compile(block.code, block.where, "exec"), {"__name__": f"docs_{block.stem}"})
    finally:
        os.environ.clear()
        os.environ.update(environment)
    expected = re.findall(r"^\s*print\(.*\)\s+# (.*)$", block.code, re.MULTILINE)
    if expected:
        # Airflow's log records go to stdout as well; only what the block printed counts.
        output = [line for line in printed.getvalue().splitlines() if not _LOG_RECORD.match(line)]
        assert output == expected, f"{block.where}: printed something else"


def check_python(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    excerpt = _EXAMPLE_EXCERPT.match(block.code.split("\n")[0])
    if excerpt:
        check_example_excerpt(block, excerpt[1])
    elif defines_dag(block):
        check_dag_block(block, request)
    elif re.search(r"^def test_", block.code, re.MULTILINE):
        run_pytest_block(block, tmp_path)
    else:
        run_python_block(block, request, tmp_path)


# -- shell blocks -------------------------------------------------------------------------------------


def shell_commands(block: Block) -> list[str]:
    """The block's commands, continuation lines joined; in ``console`` only the ``$ `` lines."""
    lines = block.code.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending.strip())
        pending = ""
    assert not pending, f"{block.where}: the last command ends with a backslash"
    return commands


@cache
def package_extras() -> frozenset[str]:
    section = re.search(
        r"^\[project\.optional-dependencies\]\n(.*?)^\[", (REPO / "pyproject.toml").read_text(), re.M | re.S
    )
    assert section, "pyproject.toml has no [project.optional-dependencies]"
    return frozenset(re.findall(r"^([\w-]+)\s*=", section[1], re.MULTILINE))


@cache
def locked_airflow_versions() -> frozenset[str]:
    """The Airflow versions the test environments' locks pin (requirements/airflow-*.txt)."""
    return frozenset(
        re.findall(r"^apache-airflow==(\S+)", lock.read_text(), re.MULTILINE)[0]
        for lock in (REPO / "requirements").glob("airflow-*.txt")
    )


def check_pip_install(argv: list[str]) -> None:
    """This package by name, from this checkout (`.`) or as the wheel `uv build` writes for this version,
    with Airflow providers; or a tested Airflow, with its own constraints file or beside this package
    (and on 3.1, `cryptography<51`, which its lock holds too)."""
    assert argv[:2] == ["pip", "install"], f"not a pip install: {argv}"
    arguments = argv[2:]
    airflow = next((arg.partition("==")[2] for arg in arguments if arg.startswith("apache-airflow==")), None)
    if "--constraint" in arguments:
        url = arguments[arguments.index("--constraint") + 1]
        assert arguments == [f"apache-airflow=={airflow}", "--constraint", url], f"not Airflow alone: {argv}"
        assert re.fullmatch(
            rf"https://raw\.githubusercontent\.com/apache/airflow/constraints-{re.escape(airflow or '')}/"
            r"constraints-3\.1[0-9]\.txt",
            url,
        ), f"not the constraints file of Airflow {airflow}: {url}"
        arguments = []
    if airflow is not None:
        assert airflow in locked_airflow_versions(), f"Airflow {airflow} is in no lock of requirements/"
        arguments = [arg for arg in arguments if arg != f"apache-airflow=={airflow}"]
        if airflow.startswith("3.1."):
            arguments = [arg for arg in arguments if arg != "cryptography<51"]
        if not arguments:
            return
    wheel = re.escape(f"dist/airflow_provider_octopusx-{__version__}-py3-none-any.whl")
    package = rf"(airflow-provider-octopusx|\.|{wheel})(\[[\w,-]+\])?"
    ours = [arg for arg in arguments if re.fullmatch(package, arg)]
    assert ours, (
        f"installs something other than airflow-provider-octopusx (or its wheel of {__version__}): {argv}"
    )
    for arg in ours:
        extras = set(re.findall(r"[\w-]+", arg.partition("[")[2]))
        assert extras <= package_extras(), f"{arg}: pyproject.toml has no extra {extras - package_extras()}"
    for arg in arguments:
        assert arg in ours or re.fullmatch(r"apache-airflow-providers-[\w-]+(\[[\w,-]+\])?", arg), (
            f"pip installs {arg!r}, which is neither this package nor an Airflow provider"
        )


def check_export(argv: list[str]) -> None:
    assert len(argv) == 2, f"not a single export: {argv}"
    assert "=" in argv[1], f"exports no value: {argv}"
    name, _, value = argv[1].partition("=")
    if name.startswith("AIRFLOW_CONN_"):
        check_connection_json(value)
        return
    section_and_key = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    assert section_and_key, f"exports {name}, which is neither a connection nor an Airflow option"
    from airflow.configuration import conf

    section, key = (part.lower() for part in section_and_key.groups())
    assert conf.has_option(section, key), f"Airflow has no option [{section}] {key}"


def check_connection_json(value: str) -> None:
    from airflow.models.connection import Connection

    from airflow_octopusx.hooks.connection import ApiEndpoint

    fields = json.loads(value)
    assert fields.get("conn_type") == "octopusx", f"not an octopusx connection: {value}"
    endpoint = ApiEndpoint.from_connection(Connection(conn_id="docs", **fields))  # the https rule holds
    assert endpoint.api_key == fields["password"]


def check_release_command(argv: list[str]) -> None:
    """Building and uploading: ``scripts/check_dist.py``, which ``./dev test`` runs, builds with ``uv build``
    and runs ``twine check --strict``; ``twine upload`` is the release itself, never run from here."""
    assert "scripts/check_dist.py" in (REPO / "dev").read_text(), "./dev test does not run check_dist.py"
    known = (
        ["uv", "build"],
        ["python", "-m", "build"],
        ["twine", "check", "--strict", "dist/*"],
        ["twine", "upload", "dist/*"],
    )
    assert argv in known, f"not a build or upload command of docs/releasing.md: {argv}"


def run_simulator_command(argv: list[str]) -> None:
    """Start the simulator as documented, but on free ports; it must print the connection and stop cleanly."""
    arguments = argv[3:]
    for flag in ("--port", "--cdn-port"):
        arguments = [f"{flag}=0" if arg.startswith(f"{flag}=") else arg for arg in arguments]
        if flag in arguments:
            arguments[arguments.index(flag) + 1] = "0"
    if not any(arg.startswith("--port") for arg in arguments):
        arguments += ["--port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_octopusx.simulator", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()
    output = []
    try:
        while not any(line.startswith("export AIRFLOW_CONN_OCTOPUSX_DEFAULT=") for line in output):
            try:
                output.append(lines.get(timeout=30))
            except queue.Empty:
                pytest.fail(f"{shlex.join(argv)} printed no connection in 30 s:\n{''.join(output)}")
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=15)
    assert returncode == 0, f"{shlex.join(argv)} exited {returncode}:\n{''.join(output)}"
    [export] = [line for line in output if line.startswith("export ")]
    check_export(shlex.split(export))


@cache
def example_params() -> dict[str, set[str]]:
    bag = load_dags(REPO / "example_dags")
    return {dag_id: set(dag.params) for dag_id, dag in bag.dags.items()}


def check_airflow_command(argv: list[str]) -> None:
    if argv == ["airflow", "db", "migrate"]:
        return
    assert argv[:3] == ["airflow", "dags", "test"], f"unknown airflow command: {argv}"
    assert len(argv) > 3, "airflow dags test without a DAG id"
    dag_id = argv[3]
    documented = {dag_id for block in DAG_BLOCKS for dag_id in dag_ids_in(block.code)}
    assert dag_id in example_params().keys() | documented, f"there is no DAG {dag_id!r} to test"
    options = argv[4:]
    for flag in ("-c", "--conf"):
        if flag in options:
            conf = json.loads(options[options.index(flag) + 1])
            unknown = set(conf) - example_params().get(dag_id, set(conf))
            assert not unknown, f"{dag_id} has no params {unknown}"


def run_curl(argv: list[str], request: pytest.FixtureRequest) -> None:
    """Send a documented ``curl`` to a running simulator (its documented address swapped for the real one)."""
    simulator: Simulator = request.getfixturevalue("octopusx_conn")
    method, data, url = "GET", None, None
    arguments = iter(argv[1:])
    for arg in arguments:
        if arg == "-X":
            method = next(arguments)
        elif arg in ("-d", "--data"):
            data = next(arguments)
            method = "POST" if method == "GET" else method
        elif arg in ("-s", "-sS", "--fail"):
            continue
        else:
            assert url is None, f"curl argument not understood: {arg!r}"
            url = arg
    assert url is not None, "curl without a URL"
    assert url.startswith("http://127.0.0.1:8765/_simulator/"), f"curl to {url}, not to the simulator"
    response = httpx.request(
        method, url.replace("http://127.0.0.1:8765", simulator.api_url), content=data, timeout=10
    )
    assert response.is_success, f"{method} {url} answered {response.status_code}: {response.text}"
    response.json()


def check_command(argv: list[str], request: pytest.FixtureRequest) -> None:
    if argv in (["./dev", "demo"], ["./dev", "test"], ["./dev", "lock"]):
        # ./dev test is what CI runs (.ci/run); ./dev demo runs an example DAG that tests/example_dags
        # runs too; the locks ./dev lock writes are checked by tests/test_test_environments.py.
        return
    if argv[:3] == ["python", "-m", "airflow_octopusx.simulator"]:
        run_simulator_command(argv)
    elif argv[0] == "pip":
        check_pip_install(argv)
    elif argv[0] in ("uv", "twine") or argv[:3] == ["python", "-m", "build"]:
        check_release_command(argv)
    elif argv[0] == "export":
        check_export(argv)
    elif argv[0] == "airflow":
        check_airflow_command(argv)
    elif argv[0] == "curl":
        run_curl(argv, request)
    else:
        raise AssertionError(
            "unknown command; if it belongs in the docs, teach tests/test_docs.py to check it"
        )


def check_shell(block: Block, request: pytest.FixtureRequest) -> None:
    commands = shell_commands(block)
    assert commands, f"{block.where}: a shell block without a command"
    for command in commands:
        try:
            check_command(shlex.split(command), request)
        except (AssertionError, ValueError) as error:
            pytest.fail(f"{block.where}: `{command}`: {error}")


# -- other blocks -------------------------------------------------------------------------------------

_MIN_LITERAL = 15
_MIN_COVERAGE = 0.4


@cache
def message_patterns() -> tuple[re.Pattern[str], ...]:
    """A regex for every string literal and f-string of the package, placeholders as wildcards."""
    patterns = []
    for source in (REPO / "airflow_octopusx").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.JoinedStr):
                parts = [value.value if isinstance(value, ast.Constant) else None for value in node.values]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = re.split(r"%[-#0-9.]*[sdrgfi]", node.value)
                parts = [item for part in parts for item in (part, None)][:-1]
            else:
                continue
            literal = [part for part in parts if part is not None]
            if sum(len(part) for part in literal) < _MIN_LITERAL:
                continue
            regex = "".join(".+?" if part is None else re.escape(part) for part in parts)
            patterns.append(re.compile(regex[:-3] + ".+" if regex.endswith(".+?") else regex, re.DOTALL))
    return tuple(patterns)


def is_message_of_the_code(line: str) -> bool:
    """True if a literal or f-string of the package produces most of ``line``."""
    for pattern in message_patterns():
        match = pattern.search(line)
        if match and (match.end() - match.start()) / len(line) >= _MIN_COVERAGE:
            return True
    return False


def check_data(block: Block) -> None:
    try:
        if block.language == "json":
            json.loads(block.code)
        elif block.language in ("yaml", "yml"):
            list(yaml.safe_load_all(block.code))
        elif block.language in ("ini", "cfg"):
            check_ini(block.code)
        elif block.language in ("text", "txt"):
            if block.directive == "message":
                for line in filter(str.strip, block.code.splitlines()):
                    assert is_message_of_the_code(line), f"no message of airflow_octopusx reads {line!r}"
            else:
                assert not block.directive, f"unknown directive {block.directive!r}"
        else:
            pytest.fail(
                f"{block.where}: unknown language {block.language!r}; give the block one this test knows"
            )
    except (AssertionError, ValueError, yaml.YAMLError, configparser.Error) as error:
        pytest.fail(f"{block.where}: {error}")


def check_ini(text: str) -> None:
    from airflow.configuration import conf

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    for section in parser.sections():
        if conf.has_section(section):
            for key in parser[section]:
                assert conf.has_option(section, key), f"Airflow has no option [{section}] {key}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{block.where}-{block.language}" for block in BLOCKS])
def test_code_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.language == "python":
        check_python(block, request, tmp_path)
    elif block.language in ("bash", "sh", "shell", "console"):
        check_shell(block, request)
    else:
        check_data(block)


def test_every_doc_dag_id_is_unique() -> None:
    written = [dag_id for block in DAG_BLOCKS for dag_id in dag_ids_in(block.code)]
    for folder in ("example_dags", "tests/dags"):
        written += [
            dag_id for path in (REPO / folder).glob("*.py") for dag_id in dag_ids_in(path.read_text())
        ]
    assert sorted({dag_id for dag_id in written if written.count(dag_id) > 1}) == []


# -- tables, links and versions -----------------------------------------------------------------------


def headings(path: Path) -> list[tuple[int, int, str]]:
    """``(line index, level, title)`` of each heading outside code blocks."""
    found = []
    fence = ""
    for index, line in enumerate(path.read_text().splitlines()):
        opening = _FENCE.match(line)
        if opening and (not fence or opening["fence"].startswith(fence)):
            fence = "" if fence else opening["fence"]
        elif not fence and (heading := re.match(r"(#+) (.+)$", line)):
            found.append((index, len(heading[1]), heading[2].strip()))
    return found


def section(path: Path, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    lines = path.read_text().splitlines()
    marks = headings(path)
    for position, (index, level, title) in enumerate(marks):
        if title == heading:
            end = next((later for later, depth, _ in marks[position + 1 :] if depth <= level), len(lines))
            return "\n".join(lines[index + 1 : end]) + "\n"
    raise AssertionError(f"{path.relative_to(REPO)} has no heading {heading!r}")


def table(path: Path, heading: str, first_column: str) -> list[list[str]]:
    """The rows of the table under ``heading`` whose first header cell is ``first_column``."""
    lines = section(path, heading).splitlines()
    for index, line in enumerate(lines):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_column:
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))])
            return rows
    raise AssertionError(f"{path.relative_to(REPO)} § {heading}: no table starting with {first_column!r}")


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_default(cell: str) -> Any:
    """The first code span of a Default cell that is a Python literal; ``required`` stands for none."""
    if cell == "required":
        return inspect.Parameter.empty
    for span in code_spans(cell):
        try:
            return ast.literal_eval(span)
        except (ValueError, SyntaxError):
            continue
    raise AssertionError(f"the default {cell!r} names no literal value")


OPERATOR_TABLES = {
    "SubmitVideoOperator": "airflow_octopusx.operators.octopusx",
    "DownloadVideoOperator": "airflow_octopusx.operators.octopusx",
    "GenerateVideosOperator": "airflow_octopusx.operators.batch",
    "VideoTaskSensor": "airflow_octopusx.sensors.octopusx",
    "VideoTaskTrigger": "airflow_octopusx.triggers.octopusx",
}


@pytest.mark.parametrize("name", OPERATOR_TABLES)
def test_parameter_tables_match_the_signatures(name: str) -> None:
    import importlib

    cls = getattr(importlib.import_module(OPERATOR_TABLES[name]), name)
    parameters = {
        parameter.name: parameter.default
        for parameter in inspect.signature(cls.__init__).parameters.values()
        if parameter.name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    rows = table(REPO / "docs" / "operators.md", name, "Parameter")
    documented = {code_spans(row[0])[0]: documented_default(row[1]) for row in rows}
    assert list(documented) == list(parameters), f"operators.md § {name}: parameters differ from the code"
    assert documented == parameters, f"operators.md § {name}: defaults differ from the code"
    fields = re.search(
        r"\*\*Templated fields:\*\* (.*?)\.\n\n", section(REPO / "docs" / "operators.md", name), re.S
    )
    if fields:
        assert code_spans(fields[1]) == list(cls.template_fields), f"operators.md § {name}: templated fields"


def test_simulator_flags_match_the_command_line() -> None:
    from airflow_octopusx.simulator.__main__ import _parser

    actions = [action for action in _parser()._actions if action.option_strings and action.dest != "help"]
    rows = table(REPO / "docs" / "simulator.md", "From the command line", "Flag")
    documented = {code_spans(row[0])[0]: row[1] for row in rows}
    assert list(documented) == [action.option_strings[-1] for action in actions]
    for action in actions:
        cell = documented[action.option_strings[-1]]
        expected = "off" if action.const is True else f"`{action.default}`"
        assert cell == expected, (
            f"simulator.md: {action.option_strings[-1]} defaults to {expected}, not {cell}"
        )


def test_simulator_settings_match_the_code() -> None:
    from airflow_octopusx.simulator import Settings

    rows = table(REPO / "docs" / "simulator.md", "Settings", "Setting")
    documented = {code_spans(row[0])[0]: documented_default(row[1]) for row in rows}
    assert documented == {
        field.name: getattr(Settings(), field.name) for field in dataclasses.fields(Settings)
    }


def test_simulator_faults_and_controls_match_the_code() -> None:
    from airflow_octopusx.simulator.controls import control_routes
    from airflow_octopusx.simulator.faults import FAULT_KINDS, RANDOM_FAULT_KINDS, ROUTES
    from airflow_octopusx.simulator.state import SimulatorState

    doc = REPO / "docs" / "simulator.md"
    first_spans = lambda rows: [span.strip('"') for row in rows for span in code_spans(row[0])]  # noqa: E731
    assert first_spans(table(doc, "Faults", "`route`")) == list(ROUTES)
    assert first_spans(table(doc, "Faults", "`kind`")) == list(FAULT_KINDS)
    assert first_spans(table(doc, "Random faults", "Random kind")) == list(RANDOM_FAULT_KINDS)
    routes = [
        f"{method} {route.path}"
        for route in control_routes(SimulatorState(b""))
        for method in sorted(route.methods - {"HEAD"})  # type: ignore[attr-defined]
    ]
    assert first_spans(table(doc, "Over HTTP", "Method and path")) == routes


def test_connection_fields_match_the_provider_metadata() -> None:
    from airflow_octopusx.get_provider_info import get_provider_info

    [connection] = get_provider_info()["connection-types"]
    labels = {
        **{
            connection["ui-field-behaviour"]["relabeling"][attribute]: f"`{attribute}`"
            for attribute in ("host", "password")
        },
        **{field["label"]: f"extra `{name}`" for name, field in connection["conn-fields"].items()},
    }
    rows = table(REPO / "docs" / "connection.md", "Fields", "UI label")
    assert {row[0]: row[1] for row in rows} == labels


def test_installation_extras_match_pyproject() -> None:
    rows = table(REPO / "docs" / "installation.md", "Extras", "Extra")
    assert {code_spans(row[0])[0] for row in rows} == package_extras()


def test_the_changelog_starts_with_this_version() -> None:
    latest = re.search(r"^## (\S+)", (REPO / "docs" / "changelog.md").read_text(), re.MULTILINE)
    assert latest, "docs/changelog.md has no version heading"
    assert latest[1] == __version__


def github_anchor(heading: str, seen: dict[str, int]) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    return {github_anchor(title, seen) for _, _, title in headings(path)}


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(path.relative_to(REPO)) for path in DOC_FILES])
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"^ *(```|~~~).*?^ *\1", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == [], f"{path.relative_to(REPO)}: broken links"
