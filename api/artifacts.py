"""A content-addressed artifact store: files named by their sha256 under a folder or any fsspec URL.

``ARTIFACT_STORE=/srv/ddsm/artifacts`` (default ``<DDSM_HOME>/artifacts``), ``s3://bucket/ddsm``,
``gs://...`` or a shared mount. A checkpoint folder is stored as its files plus a small JSON *tree*
(``{"files": {name: sha256}}``, itself content-addressed), so a folder has one id, like a git tree.
Writes are idempotent (same content, same name) and atomic on local disks (write to a temporary name,
then rename), so concurrent writers never expose half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ddsm_core.errors import DDSMError

_CHUNK = 1 << 20

# The key of a finalist's metrics that names its per-image features (an .npy artifact, [N x D]):
# written by the worker, read by the controller for the paired interval vs full width.
FEATURES_METRIC = "features_sha256"
# The key of a finalist's metrics that names its sample grid (a PNG of its first evaluation images,
# the same seeds for every finalist): written by the worker, served by the API.
SAMPLES_METRIC = "samples_sha256"
ARTIFACT_METRICS = (FEATURES_METRIC, SAMPLES_METRIC)  # service bookkeeping, not part of a result


class ArtifactError(DDSMError):
    """An artifact that is missing or does not match its sha256."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self._local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, sha: str) -> str:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ArtifactError(f"not a sha256 artifact id: {sha!r}")
        return f"{self.root}/{sha[:2]}/{sha}"

    def exists(self, sha: str) -> bool:
        return self.fs.exists(self._path(sha))

    def put_file(self, path: str | Path) -> str:
        sha = sha256_file(path)
        target = self._path(sha)
        if self.fs.exists(target):
            return sha
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if self._local:
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(path), target)
        return sha

    def put_bytes(self, data: bytes) -> str:
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            return self.put_file(fh.name)
        finally:
            os.unlink(fh.name)

    def get_bytes(self, sha: str) -> bytes:
        if not self.exists(sha):
            raise ArtifactError(f"artifact {sha} not found in {self.url}")
        data = self.fs.cat_file(self._path(sha))
        if hashlib.sha256(data).hexdigest() != sha:
            raise ArtifactError(f"artifact {sha} in {self.url} is corrupt (sha256 mismatch)")
        return data

    def get_file(self, sha: str, dest: str | Path) -> Path:
        """Copy an artifact to ``dest`` (verified), atomically."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        if not self.exists(sha):
            raise ArtifactError(f"artifact {sha} not found in {self.url}")
        self.fs.get_file(self._path(sha), str(tmp))
        if sha256_file(tmp) != sha:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(f"artifact {sha} in {self.url} is corrupt (sha256 mismatch)")
        os.replace(tmp, dest)
        return dest

    def put_dir(self, folder: str | Path) -> str:
        """Store every file of a folder (recursively) and return the id of its tree."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError(f"not a folder: {folder}")
        root = folder.resolve()
        paths = []
        for p in sorted(folder.rglob("*")):
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                # never copy what a link out of the folder points at (a checkpoint naming /etc/shadow)
                raise ArtifactError(f"{p} is a symlink out of {folder}; it is not stored")
            if p.is_file():
                paths.append(p)
        files = {p.relative_to(folder).as_posix(): self.put_file(p) for p in paths}
        if not files:
            raise ArtifactError(f"folder {folder} is empty")
        return self.put_bytes(json.dumps({"files": files}, sort_keys=True).encode())

    def tree(self, sha: str) -> dict[str, str]:
        try:
            files = json.loads(self.get_bytes(sha))["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"artifact {sha} is not a folder tree") from exc
        return dict(files)

    def get_dir(self, sha: str, dest: str | Path) -> Path:
        """Materialize a stored folder at ``dest`` (skipped if ``dest`` already holds it, marked by a
        ``.ddsm-tree`` file written last)."""
        dest = Path(dest)
        marker = dest / ".ddsm-tree"
        if marker.exists() and marker.read_text() == sha:
            return dest
        for name, file_sha in self.tree(sha).items():
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise ArtifactError(f"tree {sha} names an unsafe path {name!r}")
            self.get_file(file_sha, dest / name)
        marker.write_text(sha)
        return dest
