"""A real S3-compatible server (moto) for the storage tests, and an Airflow ``aws`` connection to it.

moto runs as its own process and is reached over a socket, so the operators go through the same
Airflow connection, s3fs and botocore code as against AWS. Without the amazon provider or moto the
whole folder is skipped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The connection id a user would give ``destination_conn_id`` / ``input_conn_id``.
S3_CONN_ID = "octopusx_test_s3"
_CREDENTIALS = {"login": "testing", "password": "testing"}
_REGION = "us-east-1"
_STARTUP_TIMEOUT = 30.0
# `moto_server`, run by this venv's interpreter after asking Linux to SIGTERM it when its parent dies:
# teardown stops it, and this covers a pytest that never gets there (killed, or a timeout's os._exit).
_MOTO_SERVER = """
import os, runpy, signal, sys
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv.pop(1)):
        sys.exit("pytest is gone already")
runpy.run_module("moto.server", run_name="__main__", alter_sys=True)
"""
# werkzeug's access log: 127.0.0.1 - - [date] "PUT /bucket/key?partNumber=1&uploadId=... HTTP/1.1" 200 -
# Any other status than 200 is coloured, with terminal escapes inside the quotes.
_REQUEST_LINE = re.compile(r'"([A-Z]+ \S+) HTTP/[\d.]+"')
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[\d;]*m")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll until moto answers HTTP; fail at once (with its log) if the process died instead."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"moto_server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer within {_STARTUP_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.05)


@dataclass(frozen=True)
class MotoServer:
    """A running ``moto_server``; its request log shows how a client really talked to it."""

    endpoint: str
    log: Path

    def requests(self) -> list[str]:
        """``"METHOD /path?query"`` of each request served so far, in order."""
        lines = _TERMINAL_ESCAPE.sub("", self.log.read_text(errors="replace")).splitlines()
        return [match[1] for match in map(_REQUEST_LINE.search, lines) if match]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A ``moto_server`` process serving S3 for the whole session."""
    pytest.importorskip("moto.server", reason="needs moto[s3], flask and flask-cors")
    pytest.importorskip("boto3")
    port = _free_port()
    # A file, not a pipe: moto logs every request, and a pipe nobody reads would fill and stall it.
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, str(os.getpid()), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = MotoServer(endpoint=f"http://127.0.0.1:{port}", log=log)
    try:
        _wait_until_serving(process, f"{server.endpoint}/moto-api/", log)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_conn_id(moto_server: MotoServer) -> Iterator[str]:
    """An ``aws`` connection to moto, set through an environment variable as a user would."""
    connection = {
        "conn_type": "aws",
        **_CREDENTIALS,
        "extra": {"endpoint_url": moto_server.endpoint, "region_name": _REGION},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{S3_CONN_ID.upper()}", json.dumps(connection))
        yield S3_CONN_ID


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    """A plain boto3 client, to arrange and inspect the bucket independently of the code under test."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        aws_access_key_id=_CREDENTIALS["login"],
        aws_secret_access_key=_CREDENTIALS["password"],
        region_name=_REGION,
    )


@dataclass(frozen=True)
class Bucket:
    """A bucket of this test's own, so listing it shows exactly what the test left behind."""

    name: str
    client: Any
    server: MotoServer

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def listed_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def unfinished_uploads(self) -> list[str]:
        """Keys of multipart uploads begun and never completed or aborted: invisible, yet billed."""
        uploads = self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return [upload["Key"] for upload in uploads]

    def requests(self) -> list[str]:
        """``"METHOD /path?query"`` of each request moto served for this bucket, in order."""
        return [line for line in self.server.requests() if line.split(" ", 1)[1].startswith(f"/{self.name}/")]


@pytest.fixture
def bucket(s3_client: Any, moto_server: MotoServer) -> Iterator[Bucket]:
    bucket = Bucket(name=f"octopusx-{uuid.uuid4().hex[:16]}", client=s3_client, server=moto_server)
    s3_client.create_bucket(Bucket=bucket.name)
    yield bucket
    for key in bucket.listed_keys():  # moto keeps objects in memory; large videos add up
        s3_client.delete_object(Bucket=bucket.name, Key=key)
