"""Progress display: rich bars in units a user understands, silenced by ``--quiet``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

T = TypeVar("T")


class Progress:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(emoji=False, quiet=quiet)
        self.quiet = quiet
        if quiet:
            silence_library_progress()

    def _bar(self) -> RichProgress:
        return RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=True, disable=self.quiet,
        )

    def track(self, items: Iterable[T], total: int, description: str, unit: str = "") -> Iterator[T]:
        with self._bar() as bar:
            task = bar.add_task(description, total=total, unit=unit)
            for item in items:
                yield item
                bar.advance(task)

    @contextmanager
    def status(self, text: str, announce: bool = True) -> Iterator[None]:
        """A spinner while the block runs; ``announce`` prints a ✓ line when it is done."""
        if self.quiet:
            yield
            return
        with self.console.status(text):
            yield
        if announce:
            self.console.print(f"[green]✓[/green] {text}")

    def note(self, text: str) -> None:
        """A plain line of information (silenced by --quiet); paths are printed as they are, not as markup."""
        self.console.print(text, markup=False, highlight=False)

    def warn(self, text: str) -> None:
        """A warning line, shown even with --quiet (a quiet run must not hide that something is off)."""
        from rich.text import Text

        Console(emoji=False, stderr=True).print(Text.assemble(("warning:", "yellow"), " ", text), highlight=False)

    def log_epoch(self, record: dict[str, Any], el_n: int) -> None:
        parts = [f"epoch {record['epoch']}"]
        for key in ("loss", "forget_loss", "retain_loss"):
            if key in record:
                parts.append(f"{key} {record[key]:.4f}")
        parts.append(f"MA {record['forget_ma']:.3f} (≤ {record['ma_threshold']:.3f})")
        if "el_scored" in record:
            el = f"> {record['el_lower_bound']:.4f} (decided on {record['el_scored']} sequences)"
        elif "el_skipped" in record:
            el = f"not scored ({record['el_skipped']})"
        elif record["forget_el"] is None:
            el = "not scored (MA above its threshold)"
        else:
            el = f"{record['forget_el']:.4f}"
        parts.append(f"EL{el_n} {el} (≤ {record['el_threshold']:.4f})")
        parts.append(f"{record['elapsed_s']:.0f}s, {record['tokens_seen']} tokens")
        self.console.print(" · ".join(parts))


def silence_library_progress() -> None:
    """Quiet means quiet: transformers' and the hub's own progress bars (loading, converting, writing) and their
    warnings (the kernels package's offline "publisher trust" notes) too."""
    import logging
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.getLogger("kernels").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
