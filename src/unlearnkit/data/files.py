"""Reading the user's text files (``file`` sources) and the data pack's CSVs: found, readable, UTF-8, with
the field asked for; every problem is one sentence naming the fix."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from unlearnkit.errors import UnlearnkitError


def user_path(path: str, data_dir: Path) -> Path:
    """A user path as given (relative to the working directory), else relative to the data dir."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and (data_dir / candidate).is_file():
        return data_dir / candidate
    if candidate.is_dir():
        raise UnlearnkitError(f"The data path {candidate} is a directory; give the path of a .txt, .jsonl or .csv "
                              "file in it.")
    raise UnlearnkitError(f"The data file {candidate} does not exist; check the path in the source's 'path'.")


def check_user_file(path: str, data_dir: str | Path, text_field: str = "text") -> Path:
    """The file a ``file`` source reads, refused before any work (no torch, no weights) when it is missing, a
    directory, unreadable, empty, or its content is not what its suffix says (not UTF-8, a line that is not a
    JSON object, a CSV without the text column, no text at all)."""
    found = user_path(path, Path(data_dir))
    if not os.access(found, os.R_OK):
        raise UnlearnkitError(f"The data file {found} cannot be read (no permission); make it readable or copy it.")
    if found.stat().st_size == 0:
        raise UnlearnkitError(f"The data file {found} is empty; give a file with text in it.")
    read_documents(found, text_field)
    return found


def read_documents(path: Path, text_field: str = "text") -> list[str]:
    """The texts of a user file: a ``.txt`` is one document, a ``.jsonl`` one per line (its ``text_field``), a
    ``.csv`` one per row (its ``text_field`` column); a file without any text is refused."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        docs = [read_text(path)]
    elif suffix == ".jsonl":
        docs = read_jsonl(path, text_field)
    else:
        docs = [record[text_field] for record in read_csv(path, text_field)]
    if not any(doc.strip() for doc in docs):
        raise UnlearnkitError(f"The data file {path} has no text (only blank lines or empty fields); give a file "
                              "with text in it.")
    return docs


def read_text(path: Path) -> str:
    try:
        # utf-8-sig: files saved by some Windows editors start with a byte-order mark.
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnlearnkitError(
            f"{path} is not valid UTF-8 (byte {exc.start}); re-save it as UTF-8 text."
        ) from exc


def read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnlearnkitError(
                f"{path} line {number} is not valid JSON ({exc.msg}); fix that line."
            ) from exc
        if not isinstance(record, dict):
            raise UnlearnkitError(f"{path} line {number} is not a JSON object; write one object per line.")
        if field not in record:
            available = ", ".join(sorted(record)) or "none"
            raise UnlearnkitError(
                f"{path} line {number} has no field '{field}' (fields: {available}); "
                "set text_field to one of them."
            )
        if not isinstance(record[field], str):
            raise UnlearnkitError(
                f"{path} line {number}: field '{field}' is not a string; store the text as a string."
            )
        docs.append(record[field])
    return docs


def read_csv(path: Path, column: str) -> list[dict[str, str]]:
    # Pile and WikiText rows can exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    text = read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    fields = reader.fieldnames or []
    if column not in fields:
        available = ", ".join(f for f in fields if f) or "none"
        raise UnlearnkitError(
            f"{path} has no column '{column}' (columns: {available}); set text_field to one of them."
        )
    return list(reader)
