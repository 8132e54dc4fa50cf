"""An HTTP shard whose server answers 500 a few times is read once it recovers; one that never does is
one unreadable shard named with its URL and the tries (not a bare FileNotFoundError)."""
from __future__ import annotations

import http.server
import io
import tarfile
import threading

import pytest

from mot_lightning.shards import urls
from mot_lightning.shards.reader import UNREADABLE_SHARD, shard_samples


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        self.events.append((name, detail))


def tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key in ("a", "b"):
            data = f"text of {key}".encode()
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server failing the first ``state["fail"]`` requests with 500, then serving a tar shard."""
    monkeypatch.setattr(urls, "HTTP_WAIT", 0.01)
    state, body = {"fail": 0, "seen": 0}, tar_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["seen"] += 1
            if state["seen"] <= state["fail"]:
                self.send_response(500)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{srv.server_port}/shard-000.tar"
    srv.shutdown()


def test_a_server_error_is_retried_and_the_shard_read(server):
    state, url = server
    state["fail"] = 2
    counts = Recorder()
    assert [s["__key__"] for s in shard_samples([url], counts)] == ["a", "b"]
    assert counts.events == []


def test_a_server_that_keeps_failing_is_one_unreadable_shard_naming_the_tries(server):
    state, url = server
    state["fail"] = 10**6
    counts = Recorder()
    assert list(shard_samples([url], counts)) == []
    [(name, detail)] = counts.events
    assert name == UNREADABLE_SHARD and f"could not be opened in {urls.HTTP_TRIES} tries" in detail and url in detail
