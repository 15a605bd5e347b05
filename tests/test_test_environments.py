"""The test environments are their locks: ``requirements/airflow-*.txt``, made by ``./dev lock``.

The package index serves new releases every day; only what a lock pins holds on a fresh machine. These
tests fail when the running environment differs from its lock (something was installed by hand, or
``./dev`` stopped installing the lock) and when a lock no longer satisfies pyproject.toml (a dependency
was changed without ``./dev lock``).
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
PYPROJECT = REQUIREMENTS.parent / "pyproject.toml"
#: Each lock and the requirement files it was resolved from besides pyproject.toml's ``dev`` extra.
LOCKS = {
    "airflow-3.3.txt": ("tools.in",),
    "airflow-3.1.1.txt": ("tools.in", "airflow-3.1.1.in"),
}
#: Installed by ``python3 -m venv`` itself, not by a lock.
VENV_SEED = {"pip", "setuptools"}
PROJECT = canonicalize_name("airflow-provider-octopusx")


@cache
def pins(lock: str) -> dict[NormalizedName, Version]:
    """The lock's ``name==version`` lines whose marker holds on this machine."""
    pinned = {}
    for line in (REQUIREMENTS / lock).read_text().splitlines():
        if not line or line[0] in " #":
            continue
        requirement = Requirement(line.removesuffix("\\").strip())
        if requirement.marker is None or requirement.marker.evaluate():
            [specifier] = requirement.specifier
            assert specifier.operator == "==", f"{lock}: {line!r} is not pinned"
            pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def requirements_of(source: str) -> list[Requirement]:
    """The requirements a lock is resolved from: a ``.in`` file, or pyproject.toml's ``dev`` extra with the
    extras it includes and the package's own dependencies."""
    if source.endswith(".in"):
        lines = (REQUIREMENTS / source).read_text().splitlines()
        return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    extras, seen = [source], set()
    while extras:
        extra = extras.pop()
        seen.add(extra)
        for requirement in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == PROJECT:
                extras.extend(requirement.extras - seen)
            else:
                found.append(requirement)
    return found


def installed() -> dict[NormalizedName, Version]:
    return {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions()
    }


def test_pytest_runs_in_exactly_the_lock_of_its_airflow() -> None:
    here = installed()
    airflow = here["apache-airflow"]
    locks = [lock for lock in LOCKS if pins(lock)["apache-airflow"] == airflow]
    assert locks, f"Airflow {airflow} is in no lock of {REQUIREMENTS}: run the tests with ./dev test"
    [lock] = locks
    wrong = {
        name: f"{here.get(name)} installed, {version} locked"
        for name, version in pins(lock).items()
        if here.get(name) != version
    }
    assert not wrong, f"the environment is not {lock}: {wrong}"
    extra = set(here) - set(pins(lock)) - VENV_SEED - {PROJECT}
    assert not extra, f"installed but not in {lock}: {sorted(extra)}"


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_satisfies_what_it_was_resolved_from(lock: str) -> None:
    environment = {**default_environment(), "extra": ""}
    unmet = []
    for source in ("dev", *LOCKS[lock]):
        for requirement in requirements_of(source):
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            version = pins(lock).get(canonicalize_name(requirement.name))
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                unmet.append(f"{requirement} ({source}): locked {version}")
    assert not unmet, f"{lock} is stale; run ./dev lock: {unmet}"


@pytest.mark.parametrize("lock", LOCKS)
def test_the_installation_page_names_what_each_lock_pins(lock: str) -> None:
    page = (REQUIREMENTS.parent / "docs" / "installation.md").read_text()
    [row] = [line for line in page.splitlines() if line.startswith(f"| `requirements/{lock}`")]
    named = re.findall(r"`([\w.-]+)` (\d[\w.]*)", row)
    assert ("apache-airflow", str(pins(lock)["apache-airflow"])) in named
    wrong = [f"{name} {version}" for name, version in named if pins(lock).get(name) != Version(version)]
    assert not wrong, f"docs/installation.md names for {lock} what it does not pin: {wrong}"
