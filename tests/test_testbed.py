"""The miniature TDEC testbed: the tiny build memorises its pool, configs load, the CLI prints the path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearnkit.cli import EXIT_BAD_INPUT, app, main
from unlearnkit.config import load_config
from unlearnkit.showcase.testbed import TESTBED_CONFIGS, forget_set_sources, read_manifest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXPECTED = {"ga": ("ga", "none"), "gd": ("gd", "none"), "lora-gd": ("gd", "lora"), "lora-ihl": ("ihl", "lora"),
            "flora-gd": ("gd", "flora"), "flora-ihl": ("ihl", "flora"), "rmu": ("rmu", "none"),
            "flora-rmu": ("rmu", "flora")}


@pytest.fixture(scope="module")
def tiny_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    from unlearnkit.showcase.testbed import build_testbed

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNLEARNKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("UNLEARNKIT_DATA", str(SHARED_DATA))
        yield build_testbed("tiny", quiet=True)


@pytest.mark.integration
@pytest.mark.slow  # builds the testbed (~45 s): `make test-slow`; benchmarks/paper_mini.py builds it too
def test_tiny_testbed_memorizes_its_pool_and_not_held_out_text(tiny_testbed: Path) -> None:
    manifest = read_manifest(tiny_testbed)
    assert (tiny_testbed / "model" / "config.json").is_file()
    assert (tiny_testbed / "model" / "tokenizer_config.json").is_file()  # the GPT-2 tokenizer travels along
    assert tiny_testbed.name.startswith("tiny-") and tiny_testbed.parent.name == "testbed"
    assert (tiny_testbed.parent / "tiny").resolve() == tiny_testbed.resolve()  # the "latest" link
    measured = manifest["measured"]
    pool, first, held = measured["pool"], measured["forget_set_0"], measured["heldout_tdec_val"]
    assert manifest["training"]["reached_target"]
    assert pool["ma"] >= 0.9
    assert held["ma"] < pool["ma"] - 0.3
    assert first["el10"] > held["el10"] + 0.1
    assert len(manifest["pool_rows"]) == 128
    assert set(manifest["jang32_rows"]) <= set(manifest["pool_rows"])


@pytest.mark.integration
@pytest.mark.slow  # the testbed build above
def test_forget_sets_are_disjoint_pool_slices(tiny_testbed: Path) -> None:
    manifest = read_manifest(tiny_testbed)
    sets = forget_set_sources(manifest, 3)
    assert sets[0].source == "jang" and sets[0].n == 32
    rows = [set(manifest["jang32_rows"])] + [set(s.rows or []) for s in sets[1:]]
    assert all(len(r) == 32 for r in rows)
    assert len(set().union(*rows)) == 96
    assert set().union(*rows) <= set(manifest["pool_rows"])


@pytest.mark.integration
@pytest.mark.slow  # the testbed build above
def test_print_path_reuses_the_cache(tiny_testbed: Path) -> None:
    result = CliRunner().invoke(app, ["testbed", "build", "--size", "tiny", "--print-path", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(tiny_testbed / "model")


def test_testbed_build_rejects_unknown_size(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["unlearnkit", "testbed", "build", "--size", "huge"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == EXIT_BAD_INPUT == 2
    assert ('Unknown testbed size "huge"; choose one of: tiny, small, smollm2, smollm2-sets, tofu-smollm2.'
            in capsys.readouterr().err)


def test_tofu_build_refuses_an_unknown_split_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["unlearnkit", "testbed", "build", "--size", "tofu-smollm2", "--tofu-split",
                                     "forget20"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == EXIT_BAD_INPUT
    assert 'Unknown --tofu-split "forget20"; choose one of: forget01, forget05, forget10.' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["testbed", "smollm2"])
def test_configs_load_and_name_the_six_methods(kind: str) -> None:
    files = sorted((REPO / "configs" / kind).glob("*.yaml"))
    assert sorted(f.stem for f in files) == sorted((*TESTBED_CONFIGS, "rmu", "flora-rmu"))  # the paper's six, RMU
    for path in files:
        config = load_config(path)
        assert (config.method.name, config.adapter.name) == EXPECTED[path.stem]
        assert config.data.forget.source == "jang" and config.data.forget.n == 32
        assert config.data.validation is not None and config.data.validation.split == "val"
        if config.method.name != "ga":
            assert config.data.retain is not None and config.data.retain.source == "wikitext"
        assert kind in config.model.name  # the cache link `unlearnkit testbed build` maintains
