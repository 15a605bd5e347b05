"""Run ``example_octopusx_text_to_video`` against the bundled simulator and print where the MP4 is.

Everything is local: the simulator listens on loopback, Airflow keeps its state in ``.demo/``, and the
DAG runs through the real ``airflow dags test`` command, deferral and all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av

from airflow_octopusx.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
DAG_ID = "example_octopusx_text_to_video"


def main() -> int:
    videos = DEMO / "videos"
    before = set(videos.glob("*.mp4"))
    airflow = Path(sys.executable).parent / "airflow"
    with Simulator() as simulator:
        simulator.configure(generation_seconds=8)
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(DEMO / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_OCTOPUSX_DEFAULT": json.dumps(
                {"conn_type": "octopusx", "host": simulator.api_url, "password": simulator.api_key}
            ),
            "OCTOPUSX_OUTPUT_DIR": f"{videos}/",
        }
        print(f"OctopusX simulator on {simulator.api_url}; Airflow home {DEMO / 'airflow'}", flush=True)
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        result = subprocess.run([airflow, "dags", "test", DAG_ID], env=env)
    new = sorted(set(videos.glob("*.mp4")) - before)
    if result.returncode != 0 or not new:
        print(f"The DAG run failed (exit code {result.returncode}); see the log above.", file=sys.stderr)
        return 1
    for path in new:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            print(
                f"\nVideo stored: {path}\n  {path.stat().st_size} bytes, {stream.codec_context.name} "
                f"{stream.width}x{stream.height}, {frames} frames decoded"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
