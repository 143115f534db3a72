"""Data source options: which sources exist, which fields each reads, and the checks on them (no torch).

:mod:`unlearnkit.data.sources` implements the loaders of the sources named here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from unlearnkit.errors import unknown_name

JANG_SIZES = (1, 4, 8, 32, 128)
JANG_SETS = 5
JANG_DOMAINS = (
    "books3", "enron_emails", "freelaw", "github", "license", "pile-cc", "pubmed_central",
    "uspto_backgrounds",
)
FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
TOFU_SPLITS = (
    "forget10", "forget05", "forget01", "retain90", "retain95", "retain99", "holdout10", "holdout05", "holdout01",
    "full", "real_authors", "world_facts", "retain_perturbed",
)
# How a question and its answer become one text: TOFU's official prompt formats (its config/model_config.yaml)
# and the tokenizer's own chat template; free text with {question} and {answer} is the fourth way.
QA_TEMPLATES = {
    "phi": "Question: {question}\nAnswer: {answer}",
    "llama2": "[INST] {question} [/INST]{answer}",
    "chat": "the tokenizer's chat template (a user turn, then the assistant's answer)",
}
# Where the scored text starts, where it is not at {answer}: TOFU's code masks "Question: ...\n" only, so its
# phi format scores "Answer: " with the answer (and generates from the question line alone).
QA_SCORED_FROM = {"phi": "Answer: {answer}"}


class SourceConfig(BaseModel):
    """One data source, as written in a config (``data.forget``, ``data.retain``, ...).

    Fields a source does not use are rejected when set, so a typo cannot silently do nothing.
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    n: int | None = None
    set: int = 0
    seed: int = 0
    split: str | None = None
    path: str | None = None
    text_field: str = "text"
    rows: list[int] | None = None
    seq_len: int | None = None
    per_document: bool = False
    template: str | None = None

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(str(unknown_name("data source", value, SOURCES)))
        return value

    @field_validator("n")
    @classmethod
    def _n_not_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError(f"n={value} is negative; give the number of sequences (or leave it out for all)")
        return value

    @field_validator("set", "seed")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"{value} is negative; use 0 or more")
        return value

    @field_validator("seq_len")
    @classmethod
    def _seq_len_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError(f"seq_len={value} is too short; a causal LM block needs at least 2 tokens")
        return value

    @field_validator("rows")
    @classmethod
    def _rows_valid(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("rows is empty; list at least one TDEC row index, or leave rows out")
        if min(value) < 0:
            raise ValueError(f"rows contains the negative index {min(value)}; TDEC rows count from 0")
        if len(set(value)) != len(value):
            raise ValueError("rows lists the same row more than once; list each row once")
        return value

    @model_validator(mode="after")
    def _fits_source(self) -> SourceConfig:
        spec = SOURCES[self.source]
        # Compare with the defaults rather than model_fields_set, so a full model_dump() (every
        # field written out, e.g. in a saved run config) still loads back.
        unused = sorted(
            name for name, info in type(self).model_fields.items()
            if name != "source" and name not in spec.fields and getattr(self, name) != info.default
        )
        if unused:
            uses = ", ".join(sorted(spec.fields)) or "no other fields"
            raise ValueError(
                f"{', '.join(unused)} does not apply to source '{self.source}'; "
                f"remove it ('{self.source}' uses: {uses})"
            )
        if spec.splits and self.split is not None and self.split not in spec.splits:
            raise ValueError(str(unknown_name(f"split for source '{self.source}'", self.split, spec.splits)))
        if spec.check is not None:
            spec.check(self)
        return self

    def label(self) -> str:
        """A short human-readable name, used as the blocks' ``name`` (e.g. ``jang:32_0``)."""
        if self.source == "jang":
            return f"jang:{self.n}_{self.set}"
        if self.source == "jang_domain":
            name = f"jang_domain:{self.split}_8_{self.set}"
            return name if self.n is None else f"{name}:n{self.n}"
        parts = [self.source]
        if self.source == "file":
            parts.append(str(self.path))
        elif SOURCES[self.source].splits:
            parts.append(self.split or SOURCES[self.source].splits[0])
        if self.rows is not None:
            parts.append(f"rows{len(self.rows)}")
        elif self.n is not None:
            parts += [f"n{self.n}", f"seed{self.seed}"]
        return ":".join(parts)


# --------------------------------------------------------------------------- per-source checks


def _check_tdec(spec: SourceConfig) -> None:
    if spec.rows is not None and spec.n is not None:
        raise ValueError("source 'tdec' takes either rows (explicit rows) or n (a random draw), not both")


def _check_jang(spec: SourceConfig) -> None:
    if spec.n is None or spec.n not in JANG_SIZES:
        raise ValueError(
            f"source 'jang' needs n set to one of {', '.join(map(str, JANG_SIZES))} "
            f"(the forget-set sizes Jang et al. published), not {spec.n}"
        )
    _check_jang_set(spec)


def _check_jang_domain(spec: SourceConfig) -> None:
    if spec.split is None:
        raise ValueError(f"source 'jang_domain' needs split set to a domain: {', '.join(JANG_DOMAINS)}")
    if spec.n is not None and not 1 <= spec.n <= 8:
        raise ValueError(f"source 'jang_domain' has 8 sequences per set; n={spec.n} must be 1..8 or left out")
    _check_jang_set(spec)


def _check_jang_set(spec: SourceConfig) -> None:
    if spec.set >= JANG_SETS:
        raise ValueError(f"set={spec.set} does not exist; Jang et al. published sets 0..{JANG_SETS - 1}")


def _check_tofu(spec: SourceConfig) -> None:
    if spec.template is not None:
        check_qa_template(spec.template)


def check_qa_template(template: str) -> None:
    """A preset name, or a text with ``{question}`` once and ending in ``{answer}``; else a ValueError."""
    if template in QA_TEMPLATES:
        return
    if template.count("{question}") != 1 or template.count("{answer}") != 1 or not template.endswith("{answer}"):
        raise ValueError(
            f"template {template!r} is neither a preset ({', '.join(QA_TEMPLATES)}) nor a text with {{question}} "
            "once and ending in {answer}; write e.g. 'Q: {question}\\nA: {answer}'"
        )


def _check_file(spec: SourceConfig) -> None:
    if not spec.path:
        raise ValueError(f"source 'file' needs path set to a {', '.join(FILE_SUFFIXES)} file")
    if Path(spec.path).suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(
            f"path {spec.path} is not a {', '.join(FILE_SUFFIXES)} file; "
            "save the text in one of those formats"
        )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: which config fields it reads, its splits, and its extra check."""

    fields: frozenset[str]
    summary: str
    splits: tuple[str, ...] = ()  # the first one is the default
    check: Callable[[SourceConfig], None] | None = None


_TEXT_FIELDS = frozenset({"n", "seed", "seq_len"})
SOURCES: dict[str, SourceSpec] = {
    "tdec": SourceSpec(
        frozenset({"n", "seed", "rows", "split", "seq_len"}),
        "TDEC rows (200 GPT-Neo tokens each): explicit rows, or n drawn by seed", splits=("train", "val"),
        check=_check_tdec,
    ),
    "jang": SourceSpec(
        frozenset({"n", "set", "seq_len"}),
        "Jang et al.'s forget set ku/forget/lm_extraction_{n}_{set}.csv (TDEC train rows)", check=_check_jang,
    ),
    "jang_domain": SourceSpec(
        frozenset({"n", "set", "split", "seq_len"}),
        "Jang et al.'s one-domain forget set ku/forget_domain/{split}_8_{set}.csv", splits=JANG_DOMAINS,
        check=_check_jang_domain,
    ),
    "wikitext": SourceSpec(_TEXT_FIELDS, "Jang et al.'s WikiText rows (the paper's retain set), as text blocks"),
    "pile": SourceSpec(_TEXT_FIELDS, "Jang et al.'s Pile validation documents, as text blocks"),
    "wikitext2": SourceSpec(_TEXT_FIELDS | {"split"}, "WikiText-2 valid or test, as text blocks",
                            splits=("valid", "test")),
    "tofu": SourceSpec(
        frozenset({"n", "seed", "split", "template"}),
        "TOFU's question-answer pairs (fictitious authors); the loss and scores count the answer only; template: "
        "phi (default) | llama2 | chat | text with {question} and {answer}", splits=TOFU_SPLITS, check=_check_tofu,
    ),
    "file": SourceSpec(
        _TEXT_FIELDS | {"path", "text_field", "per_document"},
        "a user file: .txt (whole text), .jsonl (text_field of each line), .csv (column text_field); "
        "per_document: true keeps each line/row as its own sequence",
        check=_check_file,
    ),
}


def source_names() -> list[str]:
    return sorted(SOURCES)
