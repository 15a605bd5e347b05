"""Which ``airflow_octopusx`` a benchmark measures: a git ref exported to a temp dir, or the working tree,
and a fingerprint of the files measured so a figure can be tied to the code that produced it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT


def use_product_ref(ref: str, into: Path) -> str:
    """Measure ``airflow_octopusx`` as of git ``ref`` instead of the working tree (which colleagues may
    be editing): export it with ``git archive`` and put it first on the path of this process and of every
    process started from now on (simulator included). Returns the commit measured."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "airflow_octopusx"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    sys.path.insert(0, str(into))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(into), os.environ.get("PYTHONPATH")]))
    return commit


def product_fingerprint(*files: str) -> str:
    """Where ``airflow_octopusx`` is imported from and a digest of the given files in it, so a figure can
    be tied to the code that produced it while colleagues edit the working tree."""
    spec = importlib.util.find_spec("airflow_octopusx")
    if spec is None or spec.origin is None:
        raise RuntimeError("airflow_octopusx is not importable")
    package = Path(spec.origin).parent
    digests = [f"{name} {hashlib.sha1((package / name).read_bytes()).hexdigest()[:8]}" for name in files]
    source = "working tree" if package.parent == ROOT else str(package.parent)
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", *(f"airflow_octopusx/{name}" for name in files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", *(f"airflow_octopusx/{name}" for name in files)],
        cwd=ROOT,
        check=False,
    ).returncode
    state = (
        f" (last commit {head}{', with uncommitted changes' if dirty else ''})"
        if source == "working tree"
        else ""
    )
    return f"{source}{state}: {', '.join(digests)}"
