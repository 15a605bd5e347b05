"""A scriptable OctopusX API on the hostile test server, for the batch's ledger tests.

It makes one video per POST (or, when told, answers with an id it already handed out, or makes the video
and answers with a body that cannot be read, as a proxy that lost the answer would), and each video's
status answer can be told to fail a few times (a blip), to answer a 4xx for that video alone, or to
describe another video. Every id it hands out and every POST it sees is kept, so a test can check that
nothing was paid twice and that every paid video ended stored or reported.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from airflow_octopusx.simulator.media import sample_mp4
from tests.hostile import Answer, HostileServer, Request


def mp4_of(video_id: str) -> bytes:
    """A whole MP4 that only this video has: the sample, then a ``free`` box holding the id."""
    payload = video_id.encode()
    return sample_mp4() + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


@dataclass
class FakeVideoApi:
    server: HostileServer
    #: id -> the prompt of the POST that made it
    made: dict[str, str] = field(default_factory=dict)
    #: the prompt of every POST, in order
    posts: list[str] = field(default_factory=list)
    duplicate_next: bool = False
    blips_next: int = 0
    refusal_next: int | None = None
    foreign_next: bool = False
    lost_answer_next: bool = False
    #: ids to hand out next, in order, instead of made-up ones
    ids_next: list[str] = field(default_factory=list)
    _blips: dict[str, int] = field(default_factory=dict)
    _refusals: dict[str, int] = field(default_factory=dict)
    _foreign: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FakeVideoApi:
        self.server.reset()
        self.server.script("POST /v1/videos", self._post)
        self.server.script("GET /v1/videos/*", self._status)
        self.server.script("GET /cdn/*", self._file)
        return self

    def _post(self, request: Request) -> Answer:
        prompt = json.loads(request.body)["prompt"]
        with self._lock:
            self.posts.append(prompt)
            if self.duplicate_next and self.made:
                self.duplicate_next = False
                video_id = list(self.made)[-1]
            else:
                video_id = self.ids_next.pop(0) if self.ids_next else f"video_{len(self.made)}"
                self.made[video_id] = prompt
                self._blips[video_id], self.blips_next = self.blips_next, 0
                if self.refusal_next is not None:
                    self._refusals[video_id], self.refusal_next = self.refusal_next, None
                if self.foreign_next:
                    self._foreign.add(video_id)
                    self.foreign_next = False
            if self.lost_answer_next:
                self.lost_answer_next = False
                return Answer.json('{"id": "' + video_id[:3])  # the video is made; its answer is cut
        return Answer.json(json.dumps({"id": video_id, "status": "queued", "progress": 0}))

    def _status(self, request: Request) -> Answer:
        video_id = unquote(request.path.rsplit("/", 1)[1])
        with self._lock:
            if video_id not in self.made:
                return Answer.json('{"error": {"message": "No such video", "code": "not_found"}}', 404)
            if video_id in self._refusals:
                status = self._refusals[video_id]
                return Answer.json(
                    json.dumps({"error": {"message": "Not yours", "code": f"c{status}"}}), status
                )
            if self._blips.get(video_id):
                self._blips[video_id] -= 1
                return Answer.json('{"error": {"message": "Try again", "code": "server_error"}}', 500)
            if video_id in self._foreign:
                described = next((other for other in self.made if other != video_id), "video_elsewhere")
            else:
                described = video_id
        video = {
            "id": described,
            "status": "completed",
            "progress": 100,
            "video_url": f"{self.server.url}/cdn/{quote(described, safe='')}.mp4",
        }
        return Answer.json(json.dumps(video))

    def _file(self, request: Request) -> Answer:
        video_id = unquote(request.path.rsplit("/", 1)[1]).removesuffix(".mp4")
        return Answer(200, (("Content-Type", "video/mp4"),), mp4_of(video_id))
