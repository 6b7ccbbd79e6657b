"""`foodcls data download` against a real HTTP server on 127.0.0.1."""

import hashlib
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from foodcls.errors import DownloadError
from foodcls.offdata.download import download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    range_requests: list[str] = []
    if_ranges: list[str] = []
    etag = '"v1"'  # the remote file's version; a test changes it to make the remote file change
    payload = PAYLOAD

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        if self.path == "/broken":
            self.send_error(503, "Service Unavailable")
            return
        requested = self.headers.get("Range")
        if requested:
            Handler.range_requests.append(requested)
        if self.headers.get("If-Range"):
            Handler.if_ranges.append(self.headers["If-Range"])
        payload = Handler.payload
        if self.path == "/drop":
            self.send_response(200)
            self.send_header("ETag", Handler.etag)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        # RFC 9110 If-Range: the range only if the file is still that version, else the whole new file.
        same_version = self.headers.get("If-Range") in (None, Handler.etag)
        if match and self.path == "/file" and same_version:
            start = int(match.group(1))
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:  # /file without Range or of another version, or /norange, which ignores Range
            self.send_response(200)
        if self.path != "/norange":
            self.send_header("ETag", Handler.etag)
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        self.wfile.write(payload[start:])


def saved_version(out, url, etag='"v1"'):
    """What an earlier, interrupted download of url's v1 file left beside its .part."""
    out.with_name(out.name + ".part.validator").write_text(json.dumps({"url": url, "validator": etag}))


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_full_download(server, tmp_path):
    seen = []
    out = download(f"{server}/file", tmp_path / "export.csv.gz", on_progress=lambda done, total: seen.append((done, total)))
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "export.csv.gz.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_resumes_a_partial_download_with_a_range_request(server, tmp_path):
    Handler.range_requests.clear()
    Handler.if_ranges.clear()
    (tmp_path / "export.part").write_bytes(PAYLOAD[:1000])
    saved_version(tmp_path / "export", f"{server}/file")
    out = download(f"{server}/file", tmp_path / "export", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert Handler.range_requests == ["bytes=1000-"] and Handler.if_ranges == ['"v1"']
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "export.part.validator").exists()


def test_a_remote_file_that_changed_since_the_part_began_is_fetched_whole_not_spliced(server, tmp_path):
    notices = []
    (tmp_path / "export.part").write_bytes(PAYLOAD[:1000])
    saved_version(tmp_path / "export", f"{server}/file")
    new = bytes(reversed(PAYLOAD))
    Handler.etag, Handler.payload = '"v2"', new
    try:
        out = download(f"{server}/file", tmp_path / "export", on_notice=notices.append)
    finally:
        Handler.etag, Handler.payload = '"v1"', PAYLOAD
    assert out.read_bytes() == new
    assert len(notices) == 1 and "not the version export.part began with" in notices[0]


def test_a_part_without_a_recorded_version_starts_over(server, tmp_path):
    notices = []
    (tmp_path / "export.part").write_bytes(b"x" * 1000)  # from an older foodcls, or another tool
    assert download(f"{server}/file", tmp_path / "export", on_notice=notices.append).read_bytes() == PAYLOAD
    assert notices and "starting over" in notices[0]


def test_a_part_of_another_url_is_never_spliced_even_with_the_same_version(server, tmp_path):
    # Reliability row 8: a .part begun from URL A, resumed with URL B whose file has the same validator.
    Handler.range_requests.clear()
    notices = []
    (tmp_path / "export.part").write_bytes(b"A" * 1000)
    saved_version(tmp_path / "export", f"{server}/other-file")
    out = download(f"{server}/file", tmp_path / "export", on_notice=notices.append)
    assert out.read_bytes() == PAYLOAD and Handler.range_requests == []
    assert notices and "no record that it holds this URL's file" in notices[0]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "/local/path"])
def test_only_http_and_https_urls_are_downloaded(tmp_path, url):
    with pytest.raises(DownloadError, match="only http and https URLs"):
        download(url, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_starts_over_when_the_server_ignores_range(server, tmp_path):
    (tmp_path / "export.part").write_bytes(b"stale bytes")
    assert download(f"{server}/norange", tmp_path / "export").read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_without_downloading_again(server, tmp_path):
    (tmp_path / "export.part").write_bytes(PAYLOAD)
    saved_version(tmp_path / "export", f"{server}/file")
    assert download(f"{server}/file", tmp_path / "export").read_bytes() == PAYLOAD


@pytest.mark.parametrize(("path", "status"), [("/missing", "HTTP 404"), ("/broken", "HTTP 503")])
def test_http_errors_leave_no_file(server, tmp_path, path, status):
    with pytest.raises(DownloadError, match=status):
        download(f"{server}{path}", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_dropped_connection_keeps_the_part_for_resume(server, tmp_path):
    with pytest.raises(DownloadError, match=r"connection dropped after 349,525 of 1,048,576 bytes \(HTTP 200\)"):
        download(f"{server}/drop", tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert (tmp_path / "export.part").stat().st_size == len(PAYLOAD) // 3
    assert download(f"{server}/file", tmp_path / "export").read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download(f"{server}/file", tmp_path / "export", sha256="0" * 64)
    assert not (tmp_path / "export").exists() and not (tmp_path / "export.part").exists()


def test_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(DownloadError, match="cannot connect"):
        download("http://127.0.0.1:9/x", tmp_path / "export", timeout=2)


def test_cli_reports_http_status_in_one_line(server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "foodcls", "data", "download", "--url", f"{server}/missing", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {server}/missing: HTTP 404 Not Found"]
