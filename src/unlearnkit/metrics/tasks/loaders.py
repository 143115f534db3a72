"""lm-eval ``custom_dataset`` helpers: the data directory's task files as the fields of lm-eval's own task definitions.

Each task YAML beside this file names one of these functions; lm-eval calls it with the task's
metadata, where :func:`unlearnkit.metrics.harness.reasoning_scores` puts ``data_dir``. Every file is
fetched through :func:`unlearnkit.data.catalog.ensure_file` (downloaded and checksum-checked when it is
missing). The rows become the fields lm-eval's built-in YAML of the same task reads (``question``,
``goal``/``sol1``/``sol2``, ``text``, ...), so the prompts in our YAML files are lm-eval's, verbatim.
Documents keep the files' order: lm-eval's ``limit=N`` scores the first N.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import Any

from unlearnkit.data.catalog import ensure_file

LETTERS = "ABCD"


def _path(data_dir: str | Path, name: str) -> Path:
    return ensure_file(data_dir, f"tasks/{name}")


def read_jsonl(data_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """The rows of ``tasks/<name>`` (one JSON object a line)."""
    with _path(data_dir, name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _dataset(split: str, docs: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def _strip_prefix(text: str, prefix: str, name: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{name}: expected a row starting with {prefix!r}, got {text[:60]!r}")
    return text[len(prefix):]


# ── ARC, PIQA: llm-foundry's "Question: ..." query is lm-eval's question / goal ───────────────────────


def arc_docs(data_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """ARC rows as lm-eval's ``question``, the answer texts and the gold index."""
    return [{"question": _strip_prefix(row["query"], "Question: ", name), "choices": row["choices"],
             "gold": row["gold"]} for row in read_jsonl(data_dir, name)]


def arc_easy(data_dir: str, **_: Any) -> Any:
    return _dataset("test", arc_docs(data_dir, "arc_easy.jsonl"))


def arc_challenge(data_dir: str, **_: Any) -> Any:
    return _dataset("test", arc_docs(data_dir, "arc_challenge.jsonl"))


def piqa_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """PIQA rows as lm-eval's ``goal``, ``sol1``, ``sol2``, ``label`` (the query is "Question: {goal}\\n")."""
    docs = []
    for row in read_jsonl(data_dir, "piqa.jsonl"):
        goal = _strip_prefix(row["query"], "Question: ", "piqa.jsonl").removesuffix("\n")
        docs.append({"goal": goal, "sol1": row["choices"][0], "sol2": row["choices"][1], "label": row["gold"]})
    return docs


def piqa(data_dir: str, **_: Any) -> Any:
    return _dataset("validation", piqa_docs(data_dir))


# ── COPA: llm-foundry's "premise, because" is lm-eval's "premise because" with a comma ─────────────────

_COPA = re.compile(r"^(.*), (because|therefore)$", re.S)


def copa_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """COPA rows as lm-eval's prompt (premise without its period + " because"/" therefore") and choices
    (" " + the choice with its first letter lower-cased)."""
    docs = []
    for row in read_jsonl(data_dir, "copa.jsonl"):
        match = _COPA.match(row["query"])
        if match is None:
            raise ValueError(f"copa.jsonl: unexpected row {row['query'][:60]!r}")
        docs.append({"query": f"{match.group(1)} {match.group(2)}",
                     "choices": [" " + c[:1].lower() + c[1:] for c in row["choices"]], "gold": row["gold"]})
    return docs


def copa(data_dir: str, **_: Any) -> Any:
    return _dataset("validation", copa_docs(data_dir))


# ── WinoGrande: one context per option, the shared continuation scored (lm-eval's partial scoring) ─────


def winogrande_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """WinoGrande rows: ``sentence[:blank] + option`` for both options, ``sentence[blank+1:].strip()``, gold."""
    return [{"contexts": row["context_options"], "continuation": row["continuation"], "gold": row["gold"]}
            for row in read_jsonl(data_dir, "winogrande.jsonl")]


def winogrande(data_dir: str, **_: Any) -> Any:
    return _dataset("validation", winogrande_docs(data_dir))


# ── LAMBADA: llm-foundry split the text at its last space, as lm-eval's template does ────────────────


def lambada_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """LAMBADA rows as lm-eval's ``text`` (context + " " + last word)."""
    return [{"text": row["context"] + " " + row["continuation"]}
            for row in read_jsonl(data_dir, "lambada_openai.jsonl")]


def lambada_openai(data_dir: str, **_: Any) -> Any:
    return _dataset("test", lambada_docs(data_dir))


# ── MathQA: llm-foundry lists four of the five options as "A. ..", scored as letters; we score the texts ──

_MATHQA = re.compile(r"^Question: (.*)\nA\. (.*)\nB\. (.*)\nC\. (.*)\nD\. (.*)\nAnswer: $", re.S)


def mathqa_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """MathQA rows as lm-eval's ``Problem``, the option texts and the gold index.

    Rows whose options are not four distinct texts are skipped (77 of the file's 2983): llm-foundry's
    conversion lost some options' text (``"A. "``), which no log-likelihood of a text can score.
    """
    docs = []
    for row in read_jsonl(data_dir, "math_qa.jsonl"):
        match = _MATHQA.match(row["query"])
        if match is None or row["choices"] != list(LETTERS):
            raise ValueError(f"math_qa.jsonl: unexpected row {row['query'][:60]!r}")
        options = list(match.groups()[1:])
        if "" not in options and len(set(options)) == len(options):
            docs.append({"Problem": match.group(1), "choices": options, "gold": row["gold"]})
    return docs


def mathqa(data_dir: str, **_: Any) -> Any:
    return _dataset("test", mathqa_docs(data_dir))


# ── PubMedQA: "Context: LABEL. paragraph\n..." back to lm-eval's unlabelled paragraphs ─────────────────

_PUBMEDQA = re.compile(r"^Context: (.*)\nQuestion: (.*)\nA\. yes\nB\. no\nC\. maybe\nAnswer: $", re.S)
_SECTION_LABEL = re.compile(r"^[A-Z][A-Z0-9 ,&/()'-]*\. ")


def pubmedqa_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """PubMedQA rows as lm-eval's abstract (paragraphs without their section labels), question, decision."""
    docs = []
    for row in read_jsonl(data_dir, "pubmed_qa_labeled.jsonl"):
        match = _PUBMEDQA.match(row["context"])
        if match is None:
            raise ValueError(f"pubmed_qa_labeled.jsonl: unexpected row {row['context'][:60]!r}")
        paragraphs = [_SECTION_LABEL.sub("", line, count=1) for line in match.group(1).split("\n")]
        docs.append({"abstract": "\n".join(paragraphs), "question": match.group(2),
                     "final_decision": row["continuation"]})
    return docs


def pubmedqa(data_dir: str, **_: Any) -> Any:
    return _dataset("test", pubmedqa_docs(data_dir))


# ── HellaSwag: klosax's 6-line items back to lm-eval's query / choices / label ────────────────────────

# The last sentence fragment of an ActivityNet context (HellaSwag's ``ctx_b``, lower-case in the file).
_CTX_B = re.compile(r"(?:^|[.!?] )([a-z])[^.!?]*$")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: drop WikiHow's [bracketed] markup and doubled spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(data_dir: str | Path) -> list[dict[str, Any]]:
    """HellaSwag validation items as lm-eval's processed ``query``, ``choices`` and ``label``.

    Each item is 6 lines: ``activity_label: ctx``, the gold index, 4 endings. lm-eval capitalises
    ``ctx_b`` (the unfinished last sentence of ActivityNet contexts), which the file keeps lower-case.
    """
    with bz2.open(_path(data_dir, "hellaswag_val_full.txt.bz2"), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"hellaswag_val_full.txt.bz2: {len(lines)} lines is not a whole number of 6-line items")
    docs = []
    for start in range(0, len(lines), 6):
        head, gold, *endings = lines[start:start + 6]
        label, _, ctx = head.partition(": ")
        fragment = _CTX_B.search(ctx)
        if fragment is not None:
            at = fragment.start(1)
            ctx = ctx[:at] + ctx[at].upper() + ctx[at + 1:]
        docs.append({"query": hellaswag_preprocess(f"{label}: {ctx}"),
                     "choices": [hellaswag_preprocess(e) for e in endings], "label": int(gold)})
    return docs


def hellaswag(data_dir: str, **_: Any) -> Any:
    return _dataset("validation", hellaswag_docs(data_dir))
