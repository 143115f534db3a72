"""Evaluation suites: named sets of what-the-model-kept tasks (reasoning, dialogue, perplexity); no torch.

A suite names tasks of three kinds, implemented in :mod:`unlearnkit.metrics`: multiple-choice and cloze
reasoning tasks run through lm-evaluation-harness (:mod:`unlearnkit.metrics.harness`; a name that is not
ours is passed to lm-eval as one of its built-in tasks), dialogue sets scored by F1
(:mod:`unlearnkit.metrics.dialogue`), and document sets scored by perplexity
(:mod:`unlearnkit.metrics.perplexity`). Add a suite by adding an entry to :data:`SUITES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unlearnkit.errors import unknown_name

#: The paper's nine reasoning tasks (Section 4.1), as task files shipped with the package.
REASONING_TASKS = ("lambada_openai", "hellaswag", "winogrande", "copa", "arc_easy", "arc_challenge", "piqa",
                   "mathqa", "pubmedqa")
#: Jang et al.'s four dialogue sets.
DIALOGUE_SETS = ("blended_skill_talk", "empathetic_dialogues", "wizard_of_internet", "wizard_of_wikipedia")
#: Document sets for perplexity: the Pile validation documents and WikiText (Jang et al.'s files).
PERPLEXITY_SETS = ("pile", "wikitext")


@dataclass(frozen=True)
class Suite:
    """What one suite evaluates, by kind."""

    reasoning: tuple[str, ...]
    dialogue: tuple[str, ...]
    perplexity: tuple[str, ...]
    description: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        return (*self.reasoning, *self.dialogue, *self.perplexity)


SUITES: dict[str, Suite] = {
    "paper": Suite(REASONING_TASKS, DIALOGUE_SETS, PERPLEXITY_SETS,
                   "Table 1 of the paper: nine reasoning tasks, four dialogue sets, Pile (and WikiText) perplexity"),
    "quick": Suite(("arc_easy", "piqa", "copa"), ("wizard_of_wikipedia",), ("pile",),
                   "a few cheap tasks of each kind, for smoke runs on a CPU"),
}


def resolve_suite(name: str, tasks: Sequence[str] | None = None) -> Suite:
    """The suite ``name``, or, when ``tasks`` are given, exactly those tasks sorted by kind (a name that is
    neither a dialogue nor a perplexity set is a reasoning task: ours, or one of lm-eval's built-in ones)."""
    if name not in SUITES:
        raise unknown_name("evaluation suite", name, SUITES)
    if not tasks:
        return SUITES[name]
    return Suite(reasoning=tuple(t for t in tasks if t not in DIALOGUE_SETS and t not in PERPLEXITY_SETS),
                 dialogue=tuple(t for t in tasks if t in DIALOGUE_SETS),
                 perplexity=tuple(t for t in tasks if t in PERPLEXITY_SETS),
                 description=f"the tasks {', '.join(tasks)}")
