"""lslo_data_prep.download: resume over HTTP Range, integrity checks, local archives (no network: 127.0.0.1)."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import pytest

import flores_fixture
from lslo_data_prep import download

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


class RangeServer(http.server.HTTPServer):
    """Serves one payload; honours Range; can cut the first response short.  Stops itself after 60 s."""

    def __init__(self, payload: bytes, cut_first_at=None):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.payload, self.cut_first_at, self.requests = payload, cut_first_at, []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(60, self.shutdown)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/flores101_dataset.tar.gz"

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.shutdown()
        self.server_close()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = srv.payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(srv.payload) - 1}/{len(srv.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_first_at is not None:
            cut, srv.cut_first_at = srv.cut_first_at, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def flores_tar():
    return flores_fixture.archives()["flores"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_download(args, env=None):
    return subprocess.run([sys.executable, "-m", "lslo_data_prep.download", *args], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=60)


def test_resumes_partial_file_with_range(tmp_path, flores_tar):
    payload = open(flores_tar, "rb").read()
    half = len(payload) // 2
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "flores101_dataset.tar.gz.part").write_bytes(payload[:half])
    with RangeServer(payload) as srv:
        r = run_download(["flores", "--dest", str(tmp_path), "--url", srv.url])
        url = srv.url
    assert r.returncode == 0, r.stderr
    assert srv.requests == [f"bytes={half}-"]  # only the missing half was requested
    assert "resuming" in r.stderr
    assert sha(downloads / "flores101_dataset.tar.gz") == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "flores101_dataset" / "dev" / "eng.dev").is_file()
    assert (tmp_path / "flores101_dataset" / download.STAMP).is_file()
    # the sha256 of the verified copy is recorded and the rerun does nothing
    assert open(str(downloads / "flores101_dataset.tar.gz") + ".sha256").read().split()[0] == hashlib.sha256(payload).hexdigest()
    r = run_download(["flores", "--dest", str(tmp_path), "--url", url])  # the server is gone
    assert r.returncode == 0 and "nothing to do" in r.stderr


def test_connection_cut_is_resumed(tmp_path, flores_tar):
    payload = open(flores_tar, "rb").read()
    dest = str(tmp_path / "a.tar.gz")
    with RangeServer(payload, cut_first_at=1000) as srv:
        download.fetch(srv.url, dest, retries=3, backoff=0)
    assert srv.requests == [None, "bytes=1000-"]
    assert open(dest, "rb").read() == payload


def test_corrupted_download_is_rejected(tmp_path, flores_tar):
    payload = bytearray(open(flores_tar, "rb").read())
    payload[len(payload) // 2] ^= 0xFF
    with RangeServer(bytes(payload)) as srv:
        r = run_download(["flores", "--dest", str(tmp_path), "--url", srv.url])
    assert r.returncode == 2
    assert "corrupted" in r.stderr
    assert not (tmp_path / "flores101_dataset").exists()
    assert (tmp_path / "downloads" / "flores101_dataset.tar.gz.corrupt").exists()
    assert not (tmp_path / "downloads" / "flores101_dataset.tar.gz").exists()  # a rerun downloads again


def test_local_archive_checks(tmp_path, flores_tar):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(open(flores_tar, "rb").read()[:-200])
    r = run_download(["flores", "--dest", str(tmp_path / "d1")], env={**ENV, "FLORES_ARCHIVE": str(truncated)})
    assert r.returncode == 2 and "truncated.tar.gz" in r.stderr and ("corrupted" in r.stderr or "truncated" in r.stderr)
    r = run_download(["flores", "--dest", str(tmp_path / "d2")], env={**ENV, "FLORES_ARCHIVE": flores_tar, "FLORES_SHA256": "0" * 64})
    assert r.returncode == 2 and "does not match the expected" in r.stderr
    model_tar = flores_fixture.archives()["model"]
    r = run_download(["flores", "--dest", str(tmp_path / "d3"), "--archive", model_tar])
    assert r.returncode == 2 and "not the expected archive" in r.stderr
    r = run_download(["flores", "--dest", str(tmp_path / "d4")], env={**ENV, "FLORES_ARCHIVE": flores_tar})
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "d4" / "flores101_dataset" / "devtest"))[0] == "deu.devtest"
    assert not os.path.exists(tmp_path / "d4" / "downloads")  # nothing was downloaded
