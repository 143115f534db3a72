"""The embedded demo: leak counting, perplexity, and the whole pipeline on the tiny preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import tiny_gpt_neo
from unlearnkit.cli import app
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.decoding import eval_mode, greedy_generate
from unlearnkit.metrics.perplexity import general_text_blocks, perplexity
from unlearnkit.progress import Progress
from unlearnkit.showcase.demo import DemoSettings, demo_table, prepare_memorized_model, run_demo
from unlearnkit.showcase.leaks import count_leaks, leak_probes, leak_test, leaked, reworded_probes
from unlearnkit.showcase.records import synthetic_records

TINY = DemoSettings(tiny=True, customers=16, forget=4, holdout=4, kept_scored=4)


# --------------------------------------------------------------------------------- leak counting


def test_leaked_is_an_exact_substring_match():
    assert leaked("212-555-0143", " 212-555-0143. Born")
    assert not leaked("212-555-0143", " 212-555-0134.")
    assert not leaked("alma.xu12@mail.example", " alma.xu12@mail.exampl")
    assert not leaked("", "anything")


def test_count_leaks_by_field_and_prompt_kind():
    records = synthetic_records(2, seed=1)
    probes = leak_probes(records)
    assert len(probes) == 8 and {p.kind for p in probes} == {"template", "question"}
    first, second = records
    generations = []
    for probe in probes:
        if probe.person == first.name and probe.field == "email":
            generations.append(f" {first.email}. Phone: 000")  # both e-mail prompts leak
        elif probe.person == second.name and probe.field == "phone" and probe.kind == "question":
            generations.append(f" It is {second.phone}, I think")
        else:
            generations.append(" I do not know.")
    report = count_leaks(probes, generations)
    assert report.counts == {"email_template": 1, "email_question": 1, "phone_template": 0, "phone_question": 1}
    assert report.total == 3 and report.probes == 8
    assert report.people == 2 and report.people_leaked == 2
    with pytest.raises(ValueError):
        count_leaks(probes, generations[:-1])


def test_reworded_probes_ask_for_every_secret_in_other_words_without_giving_it_away():
    records = synthetic_records(3, seed=2)
    probes = reworded_probes(records)
    assert len(probes) == 3 * 3 * 2 and {p.kind for p in probes} == {"reworded_card", "reworded_sentence",
                                                                        "reworded_chat"}
    templates = {p.prompt for p in leak_probes(records)}
    for probe in probes:
        assert probe.person in probe.prompt and probe.secret not in probe.prompt and probe.prompt not in templates
    report = count_leaks(probes, [f" {p.secret}" if p.kind == "reworded_chat" else " no" for p in probes])
    assert report.counts["email_reworded_chat"] == 3 and report.total == 6 and report.people_leaked == 3


# --------------------------------------------------------------------------------- perplexity


def test_perplexity_is_exp_of_the_mean_lm_loss():
    model = tiny_gpt_neo(vocab_size=96, seed=3)
    ids = torch.randint(0, 96, (5, 24), generator=torch.Generator().manual_seed(0))
    blocks = TokenBlocks(ids, torch.ones_like(ids), "random")
    with torch.no_grad():
        direct = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert perplexity(model, blocks, batch_size=2) == pytest.approx(direct, rel=1e-5)


def test_perplexity_weights_tokens_and_ignores_padding():
    model = tiny_gpt_neo(vocab_size=96, seed=4)
    rows = [list(range(1, 21)), list(range(30, 38))]
    blocks = TokenBlocks.from_lists(rows, "ragged", pad_id=0)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            total += float(model(input_ids=ids, labels=ids).loss) * (len(row) - 1)
            count += len(row) - 1
    assert perplexity(model, blocks, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_general_text_slice_is_fixed():
    from conftest import tiny_tokenizer
    from unlearnkit.metrics.perplexity import general_text

    tokenizer = tiny_tokenizer([general_text()[:50_000]], vocab_size=300)
    a = general_text_blocks(tokenizer, tokens=512, seq_len=128)
    b = general_text_blocks(tokenizer, tokens=512, seq_len=128)
    assert a.input_ids.shape == (4, 128) and torch.equal(a.input_ids, b.input_ids)
    assert int(a.attention_mask.sum()) == 512


# --------------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("demo") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNLEARNKIT_CACHE", str(cache))
        result = run_demo(out, TINY, compare=True, quiet=True)
        again = prepare_memorized_model(TINY, Progress(quiet=True))
    return result, cache, again


@pytest.mark.integration
def test_tiny_demo_end_to_end(tiny_demo):
    result, cache, again = tiny_demo
    out = result.output_dir
    for name in ("demo.md", "demo.png", "demo.json", "report.md", "metrics.json", "model/config.json",
                 "ga/report.md"):
        assert (out / name).exists(), name
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # step 1 cached under $UNLEARNKIT_CACHE, and found there the second time
    assert result.memorized["reached_target"] and result.memorized["ma"] >= 0.9
    assert str(again[0]).startswith(str(cache)) and again[1]["cached"]
    assert not list((cache / "demo").glob(".*partial*"))
    ihl, ga = result.runs
    assert ihl.result.config.method.name == "ihl" and ihl.result.config.adapter.name == "flora"
    assert ga.result.config.method.name == "ga" and ga.result.config.adapter.name == "none"
    assert "retain" in ga.result.after  # GA does not read the retain set; the demo scores the kept customers itself
    # the forgotten customers' MA falls
    assert ihl.result.after["forget"]["ma"] < ihl.result.before["forget"]["ma"]
    document = json.loads((out / "demo.json").read_text())
    assert len(document["runs"]) == 2 and document["before"]["perplexity"] > 1
    text = (out / "demo.md").read_text()
    assert "after IHL + FLoRA" in text and "after GA (full)" in text and "perplexity" in text
    console = Console(record=True, width=160)
    console.print(demo_table(result))
    rendered = console.export_text()
    assert "forgotten (4): MA" in rendered and "kept (4): leaks" in rendered
    assert "forgotten (4): leaks, reworded prompts" in rendered


@pytest.mark.integration
def test_leak_test_matches_greedy_generate(tiny_demo):
    """The leak test's answers (``model.generate``) are the tokens of our own greedy decoder, EOS included, and
    leaks are counted on them: the counts are those the leak test gave when it decoded with ``greedy_generate``."""
    from unlearnkit.modeling import load_model

    _, _, (memorized, _) = tiny_demo
    loaded = load_model(str(memorized / "model"))
    model, tokenizer = loaded.model, loaded.tokenizer
    records = synthetic_records(TINY.customers, TINY.seed)
    probes = leak_probes(records)
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in probes]
    # make EOS the model's most frequent greedy choice, so that decoding must go on through it
    with eval_mode(model):
        first, _ = greedy_generate(model, prompts, 20)
    common = max(set(t for c in first for t in c), key=lambda t: sum(c.count(t) for c in first))
    model.generation_config.eos_token_id = model.config.eos_token_id = common
    with eval_mode(model):
        reference, _ = greedy_generate(model, prompts, 20, batch_size=5)
    expected = count_leaks(probes, tokenizer.batch_decode(reference, skip_special_tokens=True))
    report = leak_test(model, tokenizer, records, max_new_tokens=20, batch_size=5)
    assert report.counts == expected.counts and report.examples == expected.examples
    assert report.total > 0  # the memorised model leaks: the comparison is not between two empty tallies


def test_demo_help_shows_an_example():
    output = CliRunner().invoke(app, ["demo", "--help"], terminal_width=200).output
    assert "Example" in output and "--tiny" in output and "--compare" in output and "--customers" in output
