"""The FID Inception weights' first-use download, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddsm_core.fid import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_SHA256_PREFIX,
    FID_WEIGHTS_URL_ENV,
    InceptionWeightsMissing,
    ensure_inception_weights,
    inception_weights_path,
)


@pytest.fixture
def server() -> Iterator[dict[str, bytes]]:
    """A server on 127.0.0.1 answering GET /<name> with files[name] (404 otherwise)."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    files["__url__"] = f"http://127.0.0.1:{httpd.server_address[1]}".encode()
    yield files
    httpd.shutdown()
    httpd.server_close()


def _url(files: dict[str, bytes], name: str) -> str:
    return f"{files['__url__'].decode()}/{name}"


def _no_temporaries(folder: Path) -> bool:
    return [p.name for p in folder.iterdir()] in ([], [FID_WEIGHTS_FILE])


def test_a_file_with_the_wrong_sha256_is_refused_and_nothing_lands(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    server["bad.pth"] = b"not the inception weights"
    monkeypatch.setenv(FID_WEIGHTS_URL_ENV, _url(server, "bad.pth"))
    with pytest.raises(InceptionWeightsMissing, match="sha256") as err:
        ensure_inception_weights(progress=False)
    assert FID_WEIGHTS_SHA256_PREFIX in str(err.value)
    target = inception_weights_path()
    assert not target.exists() and _no_temporaries(target.parent)


def test_a_file_with_the_right_sha256_prefix_is_accepted_into_the_hub_cache(
    server, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    # an 8-hex sha256 prefix cannot be forged in a test: the expected prefix is the fake file's own
    body = b"fake inception weights"
    prefix = hashlib.sha256(body).hexdigest()[:8]
    server[FID_WEIGHTS_FILE] = body
    path = ensure_inception_weights(_url(server, FID_WEIGHTS_FILE), sha256_prefix=prefix, progress=False)
    assert path == tmp_path / "th" / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    assert path.read_bytes() == body and _no_temporaries(path.parent)
    server.pop(FID_WEIGHTS_FILE)  # a second call uses the cached file, no request
    assert ensure_inception_weights(_url(server, FID_WEIGHTS_FILE), progress=False) == path
    assert prefix != FID_WEIGHTS_SHA256_PREFIX  # the default check would have refused this file


def test_offline_the_message_is_one_line_naming_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv(FID_WEIGHTS_URL_ENV, "http://127.0.0.1:9/x.pth")  # connection refused
    with pytest.raises(InceptionWeightsMissing) as err:
        ensure_inception_weights(progress=False)
    msg = str(err.value)
    assert "\n" not in msg and FID_WEIGHTS_FILE in msg and str(tmp_path / "th") in msg
