"""What a command may write over (unlearnkit.ownership): never an input, only what unlearnkit wrote — recognised by
the marker it writes, not by a file's name."""

from __future__ import annotations

import json
import os

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.ownership import (
    MARKDOWN_MARK,
    MARKER,
    check_output_file,
    check_replaceable,
    foreign_entries,
    mark_directory,
    marked,
)


def _written(directory):
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "weights.bin").write_bytes(b"w" * 10)
    (directory / "metrics.json").write_text("{}")
    mark_directory(directory, "run")
    return directory


def test_a_marked_directory_is_replaceable_until_a_file_is_added_or_changed(tmp_path):
    out = _written(tmp_path / "out")
    assert json.loads((out / MARKER).read_text())["files"].keys() == {"model/weights.bin", "metrics.json"}
    assert foreign_entries(out) == []
    assert check_replaceable(out, [], overwrite=True, option="output.dir") == out.resolve()
    (out / "model" / "notes.txt").write_text("mine")
    assert foreign_entries(out) == ["model/notes.txt"]
    (out / "model" / "notes.txt").unlink()
    (out / "metrics.json").write_text('{"edited": true}')  # another size
    assert foreign_entries(out) == ["metrics.json"]
    os.utime(out / "metrics.json", ns=(0, 0))
    (out / "metrics.json").write_text("{}")
    os.utime(out / "model" / "weights.bin", ns=(1, 1))  # the same size, touched since
    assert foreign_entries(out) == ["metrics.json", "model/weights.bin"]
    with pytest.raises(UnlearnkitError, match=r"did not write \(metrics.json, model/weights.bin\).*choose another "
                                              r"output.dir or move them out"):
        check_replaceable(out, [], overwrite=True, option="output.dir")


def test_without_a_marker_only_a_legacy_run_directory_is_ours(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run.json").write_text(json.dumps({"versions": {"unlearnkit": "0.1.0"}}))
    (legacy / "report.md").write_text("x")
    assert foreign_entries(legacy) == []
    (legacy / "notes.md").write_text("mine")
    assert foreign_entries(legacy) == ["notes.md"]
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "run.json").write_text('{"name": "app"}')  # somebody else's run.json
    (fake / MARKER).write_text('{"files": {}}')  # and a marker unlearnkit did not write
    assert foreign_entries(fake) == ["run.json"]


def test_inputs_are_never_outputs_nor_inside_one(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x")
    data = tmp_path / "forget.jsonl"
    data.write_text('{"text": "a"}\n')
    for target, words in ((data, "is an input"), (model / "model.safetensors", "is inside an input"),
                          (model / "scores.json", "is inside an input")):
        with pytest.raises(UnlearnkitError, match=words):
            check_output_file(target, [model, data], option="--json")
    with pytest.raises(UnlearnkitError, match="holds an input of this command"):
        check_replaceable(tmp_path, [model], overwrite=True, option="--out")
    assert data.read_text() == '{"text": "a"}\n' and (model / "model.safetensors").read_bytes() == b"x"


def test_a_file_is_replaced_only_when_unlearnkit_wrote_it(tmp_path):
    ours, theirs = tmp_path / "scores.json", tmp_path / "theirs.json"
    ours.write_text(json.dumps(marked({"ma": 0.5})))
    theirs.write_text('{"ma": 0.5}')
    assert check_output_file(ours, [], option="--json") == ours.resolve()
    assert list(json.loads(ours.read_text()))[0] == "written_by"
    with pytest.raises(UnlearnkitError, match="theirs.json exists and unlearnkit did not write it"):
        check_output_file(theirs, [], option="--json")
    page = tmp_path / "eval.md"
    page.write_text(f"{MARKDOWN_MARK}\n# What it kept\n")
    assert check_output_file(page, [], option="--output") == page.resolve()
    page.write_text("# my notes\n")
    with pytest.raises(UnlearnkitError, match="did not write it"):
        check_output_file(page, [], option="--output")


def test_an_unwritable_place_is_refused_before_the_work(tmp_path, monkeypatch):
    # as root every folder is writable, so the refusal is shown with access() saying no, as it does for a user
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else
                        real_access(path, mode))
    with pytest.raises(UnlearnkitError, match="is not writable; choose another path"):
        check_output_file(tmp_path / "scores.json", [], option="--json")
    with pytest.raises(UnlearnkitError, match=r"cannot be created in .* \(it is not writable\); choose a writable"):
        check_replaceable(tmp_path / "fisher", [], overwrite=False, option="--out")
    assert list(tmp_path.iterdir()) == []


def test_model_files_that_cannot_be_read_are_named_not_reported_missing(tmp_path, monkeypatch):
    from unlearnkit.model_names import locate_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).endswith(".safetensors") else
                        real_access(path, mode))
    with pytest.raises(UnlearnkitError, match="model files model.safetensors in .* cannot be read"):
        locate_model(str(tmp_path), None)
