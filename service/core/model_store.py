"""The model store: where registered model artifacts live, and how any worker gets a local copy of one.

An artifact URI (``model_versions.artifact_uri``) is one of:

- ``shipped``: the model inside the package (``models/shipped``), the same on every host;
- an absolute path or a ``file://`` URL: a folder every worker can read (the store on a shared mount);
- an ``http(s)://`` URL of a ``.tar.gz``/``.tgz``/``.tar`` or ``.zip`` of the artifact: downloaded once per
  host into the model cache, unpacked, and read from there.

:func:`put` copies an artifact folder into the store (``SKETCHWATCH_MODEL_STORE``, default
``<data_dir>/models``) as ``<store>/<version>/``; when ``SKETCHWATCH_MODEL_STORE_URL`` says at which URL other
hosts read that folder, it also writes ``<version>.tar.gz`` there and returns its URL. docs/models.md tells how
to run workers on other hosts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from models.artifact import META_FILE, ArtifactError, check_artifact, read_meta, shipped_model_dir

SHIPPED_URI = "shipped"
# A version names a folder and a file in the store: no separators, no leading dot.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DOWNLOAD_TIMEOUT_S = 60.0
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class StoreError(ValueError):
    """An artifact that cannot be stored or fetched; the message names the path or URL."""


def check_version(version: str) -> str:
    """Return ``version`` when it is a valid version name, else raise StoreError naming it."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise StoreError(f"invalid model version {version!r}: 1-64 letters, digits, '.', '_' or '-'")
    return version


def uri_for_dir(model_dir: str | Path | None) -> str:
    """The artifact URI of a model folder as configured (None or "": the shipped model)."""
    if not model_dir:
        return SHIPPED_URI
    return str(Path(model_dir).resolve())


def is_url(uri: str) -> bool:
    """True for an http(s) URL (fetched and cached); False for paths, file:// URLs and ``shipped``."""
    return urlparse(uri).scheme in ("http", "https")


def put(settings, artifact_dir: str | Path, version: str) -> str:
    """Copy a checked artifact folder into the store as ``<store>/<version>``; return its URI.

    The folder's model.json must carry ``version``. Storing the same version twice keeps the first copy.
    With ``model_store_url`` set, ``<version>.tar.gz`` is written beside it and its URL is returned.
    """
    check_version(version)
    source = Path(artifact_dir)
    try:
        check_artifact(source)
        meta = read_meta(source)
    except ArtifactError as exc:
        raise StoreError(str(exc)) from None
    if meta["version"] != version:
        raise StoreError(f"{source / META_FILE}: version is {meta['version']!r}, expected {version!r}")
    store = Path(settings.model_store_dir)
    store.mkdir(parents=True, exist_ok=True)
    target = store / version
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(dir=store, prefix=f".{version}."))
        try:
            for item in source.iterdir():
                if item.is_file() and not item.name.startswith("."):
                    shutil.copy2(item, tmp / item.name)
            os.chmod(tmp, 0o755)
            # A rename: readers never see a half-copied version folder.
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            # Another process stored the same version first: its copy stands.
            if not target.exists():
                raise
    if not settings.model_store_url:
        return str(target.resolve())
    archive = store / f"{version}.tar.gz"
    if not archive.exists():
        _write_tarball(target, archive)
    return f"{settings.model_store_url.rstrip('/')}/{version}.tar.gz"


def _write_tarball(folder: Path, archive: Path) -> None:
    """Pack ``folder``'s files at the archive's top level, written to a temporary name and renamed."""
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for item in sorted(folder.iterdir()):
                tar.add(item, arcname=item.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_path(settings, uri: str) -> Path:
    """A local folder holding the artifact of ``uri``; an http(s) artifact is downloaded and cached once per host."""
    if uri == SHIPPED_URI:
        return shipped_model_dir()
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return _cached_download(settings, uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # "c:" on Windows is a drive, not a scheme
        raise StoreError(f"{uri}: unsupported artifact URI scheme {parsed.scheme!r} (path, file://, http(s)://)")
    return Path(uri)


def _cached_download(settings, uri: str) -> Path:
    """Download and unpack ``uri`` into the model cache unless already there; the unpacked artifact folder."""
    cache = Path(settings.model_cache_path)
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / META_FILE).is_file():
        return target
    name = urlparse(uri).path.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise StoreError(f"{uri}: an artifact URL must end in {', '.join(ARCHIVE_SUFFIXES)}")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".download."))
    try:
        archive = work / "artifact"
        try:
            with urllib.request.urlopen(uri, timeout=DOWNLOAD_TIMEOUT_S) as answer, open(archive, "wb") as out:
                shutil.copyfileobj(answer, out)
        except OSError as exc:  # URLError and HTTPError are OSErrors
            raise StoreError(f"{uri}: download failed ({exc})") from None
        unpacked = work / "unpacked"
        unpacked.mkdir()
        _unpack(archive, unpacked, uri, zip_file=name.endswith(".zip"))
        folder = _artifact_root(unpacked, uri)
        try:
            # Another process of this host may have finished first: then its copy is used and ours dropped.
            os.rename(folder, target)
        except OSError:
            if not (target / META_FILE).is_file():
                raise
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(archive: Path, into: Path, uri: str, zip_file: bool) -> None:
    """Extract a tar or zip archive, refusing members that would land outside ``into``."""
    try:
        if zip_file:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if not (into / member).resolve().is_relative_to(into.resolve()):
                        raise StoreError(f"{uri}: archive member {member!r} points outside the archive")
                zf.extractall(into)
        else:
            with tarfile.open(archive) as tar:
                # The "data" filter refuses absolute paths, links out of the folder and device files.
                tar.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise StoreError(f"{uri}: not a readable tar or zip archive ({exc})") from None


def _artifact_root(unpacked: Path, uri: str) -> Path:
    """The folder with model.json: the archive's top level, or its one top-level folder."""
    if (unpacked / META_FILE).is_file():
        return unpacked
    entries = [p for p in unpacked.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and (entries[0] / META_FILE).is_file():
        return entries[0]
    raise StoreError(f"{uri}: the archive has no {META_FILE} at its top level or in its one folder")
