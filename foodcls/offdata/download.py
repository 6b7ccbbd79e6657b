"""`foodcls data download`: stream a URL to PATH.part, resume with HTTP Range, rename when complete."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from foodcls import __version__
from foodcls.errors import DownloadError
from foodcls.fileio import atomic_write_text

OFF_CSV_EXPORT = "https://static.openfoodfacts.org/data/en.openfoodfacts.org.products.csv.gz"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30.0
ProgressCallback = Callable[[int, int | None], None]  # (bytes on disk, total bytes or None)


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _validator_path(path: Path) -> Path:
    """Beside PATH.part: the ETag / Last-Modified of the version being downloaded, sent back as If-Range on
    resume so that a remote file that changed in between (OFF regenerates its exports daily) is fetched
    whole again instead of being spliced from two versions."""
    return path.with_name(path.name + ".part.validator")


def _validator(response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # a weak ETag may not be used with If-Range
        return etag
    return response.headers.get("Last-Modified")


def _saved_validator(path: Path, url: str) -> str | None:
    """The validator saved for the .part, if it was saved for this URL: another URL's file (with, by chance,
    the same Last-Modified) must never be spliced onto it."""
    try:
        saved = json.loads(_validator_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("url") != url:
        return None
    return saved.get("validator") if isinstance(saved.get("validator"), str) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _total_from(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    match = re.search(r"/(\d+)\s*$", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isascii() and length.isdigit() else None


def download(
    url: str, out: str | Path, sha256: str | None = None, on_progress: ProgressCallback | None = None,
    timeout: float = TIMEOUT_SECONDS, on_notice: Callable[[str], None] | None = None,
) -> Path:
    """Download url to out. A partial `out.part` is resumed only if the remote file is still the version it
    began (If-Range with the saved ETag / Last-Modified); nothing appears at `out` unless complete.
    on_notice hears why a download starts over."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"--url {url}: only http and https URLs can be downloaded (resumed, checked); got {scheme or 'no'} scheme")
    out = Path(out)
    part = _part_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    validator = _saved_validator(out, url) if offset else None
    if offset and validator is None:
        if on_notice is not None:
            on_notice(f"{part}: no record that it holds this URL's file, nor which version; starting over")
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": f"foodcls/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        request.add_header("If-Range", validator)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Range past the end: the .part is already whole if its size is the server's size.
            total = _total_from(error, 0)  # type: ignore[arg-type]
            if total == offset:
                return _finish(part, out, sha256)
            part.unlink()
            return download(url, out, sha256, on_progress, timeout, on_notice)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    with response:
        if offset and response.status != 206:
            # The remote file changed since the .part began (If-Range failed), or the server ignores Range.
            if on_notice is not None:
                on_notice(f"{url}: the remote file is not the version {part.name} began with (or the server cannot resume); "
                          "starting over")
            offset = 0
        if not offset:
            current = _validator(response)
            _validator_path(out).unlink(missing_ok=True)
            if current is not None:
                atomic_write_text(_validator_path(out), json.dumps({"url": url, "validator": current}) + "\n")
        total = _total_from(response, offset)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as handle:
                if on_progress is not None:
                    on_progress(received, total)
                while block := response.read(CHUNK_BYTES):
                    handle.write(block)
                    received += len(block)
                    if on_progress is not None:
                        on_progress(received, total)
                handle.flush()
                os.fsync(handle.fileno())
        except (socket.timeout, TimeoutError):
            raise DownloadError(f"{url}: timed out after {received:,} bytes (HTTP {response.status}); run again to resume") from None
        except (http.client.IncompleteRead, ConnectionError, OSError) as error:
            raise DownloadError(
                f"{url}: connection dropped after {received:,} bytes (HTTP {response.status}: {type(error).__name__}); run again to resume"
            ) from None
    if total is not None and received < total:
        raise DownloadError(f"{url}: connection dropped after {received:,} of {total:,} bytes (HTTP {response.status}); run again to resume")
    return _finish(part, out, sha256)


def _finish(part: Path, out: Path, sha256: str | None) -> Path:
    if sha256 is not None:
        actual = _sha256(part)
        if actual.lower() != sha256.lower():
            part.unlink()
            raise DownloadError(f"{out}: SHA-256 mismatch: expected {sha256.lower()}, got {actual}; the partial file was removed")
    os.replace(part, out)
    _validator_path(out).unlink(missing_ok=True)
    return out
