"""The command line's shared parts: the typer app, exit codes, option types, input parsing, errors, main()."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from unlearnkit.errors import UnlearnkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Make a causal LM forget memorised text, prove it forgot, and show what it kept.")
err = Console(emoji=False, stderr=True)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # the loss became NaN/inf, or the model collapsed: restored to the last good epoch
EXIT_NOT_FORGOTTEN = 4  # the forgetting criterion was not met within the epoch budget
EXIT_SWEEP_FAILURES = 5  # a sweep ran, but some of its points failed (recorded in its results)
EXIT_ENVIRONMENT = 6  # the file system refused: a full disk, a path it cannot write, a name too long
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); `run` saved a checkpoint to resume from

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or logs")]
ModelName = Annotated[str, typer.Argument(help="hub id, local directory, .gguf file or 'smollm2'")]
SeqLen = Annotated[int, typer.Option(min=2, help="tokens per sequence")]
ElN = Annotated[int, typer.Option("--n", min=1, help="n of EL_n")]
DataDir = Annotated[str | None, typer.Option(help="data directory (default $UNLEARNKIT_DATA)")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="also write the results here (JSON)")]


def validated(build: Any, what: str) -> Any:
    """``build()`` a config model; a validation error becomes one sentence naming ``what`` was wrong (exit 2)."""
    from pydantic import ValidationError

    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ").rstrip(".")
        where = f" at {'.'.join(map(str, first['loc']))}" if first["loc"] else ""
        raise UnlearnkitError(f"{what} is invalid{where}: {message}{'' if message.endswith(('?', '.')) else '.'}"
                              ) from None


def check_json_out(path: Path | None, model: str, sources: list[str], data_dir: str | None) -> None:
    """Refuse a --json path that cannot take a file or may not be written (an input of the command, a file
    unlearnkit did not write: :func:`unlearnkit.ownership.check_output_file`), before the work whose results it
    would hold."""
    if path is None:
        return
    from unlearnkit.data.catalog import resolve_data_dir
    from unlearnkit.io import cache_root
    from unlearnkit.ownership import check_output_file

    inputs = [Path(model).expanduser(), resolve_data_dir(data_dir), cache_root()]
    inputs += [Path(spec.path).expanduser() for spec in map(parse_source, sources) if spec.path]
    check_output_file(path, [p for p in inputs if p.exists()], option="--json")


def model_and_sources(model: str, sources: list[str], data_dir: str | None, seq_len: int,
                       progress: Any, el_n: int) -> tuple[Any, list[Any]]:
    """Load ``model`` and each of ``sources`` (CLI source strings) as token blocks for its tokenizer."""
    if el_n + 1 > seq_len:
        raise UnlearnkitError(f"EL{el_n} needs sequences of at least {el_n + 1} tokens but --seq-len is {seq_len}; "
                              "lower --n or raise --seq-len.")
    from unlearnkit.model_names import locate_model, model_shape

    locate_model(model, None)  # these commands load a model, not a run directory: refused before torch
    shape = model_shape(model)
    if shape is not None and shape.context is not None and seq_len > shape.context:
        raise UnlearnkitError(f"--seq-len {seq_len} is longer than the model's context ({shape.context} positions); "
                              f"lower --seq-len to at most {shape.context}.")
    specs = [parse_source(text) for text in sources]  # bad input fails before the model loads
    from unlearnkit.data.files import check_user_file
    from unlearnkit.data.sources import load_blocks, resolve_data_dir
    from unlearnkit.modeling import load_model

    directory = resolve_data_dir(data_dir)
    for spec in specs:
        if spec.source == "file" and spec.path:
            check_user_file(spec.path, directory, spec.text_field)
    with progress.status(f"Loading {model}"):
        loaded = load_model(model)
    return loaded, [load_blocks(spec, loaded.tokenizer, directory, seq_len=seq_len) for spec in specs]


def check_model_name(name: str) -> None:
    """Refuse a local model path that holds no model (a run directory is fine), before torch is imported."""
    from unlearnkit.model_names import locate_model

    directory = Path(name).expanduser()
    if not ((directory / "run.json").is_file() or (directory / "model" / "config.json").is_file()):
        locate_model(name, None)


def parse_source(text: str) -> Any:
    """``path/to/file.txt`` or ``SOURCE[,key=value...]`` → a data SourceConfig."""
    import yaml

    from unlearnkit.config import SourceConfig

    if Path(text).expanduser().is_file():
        return SourceConfig(source="file", path=str(Path(text).expanduser()))
    name, *pairs = [part.strip() for part in text.split(",")]
    if not pairs and (Path(name).suffix.lower() in (".txt", ".jsonl", ".csv") or "/" in name):
        where = Path(name).expanduser()
        problem = "is a directory" if where.is_dir() else "does not exist"
        raise UnlearnkitError(f"The data file {where} {problem}; give the path of a .txt, .jsonl or .csv file, or a "
                              "source such as jang,n=32,set=0.")
    fields: dict[str, Any] = {"source": name}
    for pair in pairs:
        if "=" not in pair:
            raise UnlearnkitError(f'The data option part "{pair}" is not key=value; write e.g. jang,n=32,set=0.')
        key, value = pair.split("=", 1)
        fields[key.strip()] = yaml.safe_load(value)
    return validated(lambda: SourceConfig(**fields), f"The data option {text!r}")


def main() -> None:
    """Entry point: user errors become one red sentence and a non-zero exit, never a traceback."""
    try:
        # Outside standalone mode click returns a command's exit code (typer.Exit) instead of exiting.
        code = app(standalone_mode=False)
    except UnlearnkitError as error:
        error_line(str(error))
        sys.exit(EXIT_BAD_INPUT)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        error_line("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:  # the file system refused (atomic writes leave nothing half-written behind)
        where = f" ({error.filename})" if error.filename else ""
        error_line(f"The file system refused: {error.strerror or error}{where}; free space, fix the permissions or "
                   "choose another path, then run the command again (a run continues from its last checkpoint).")
        sys.exit(EXIT_ENVIRONMENT)
    except Exception as error:
        # Usage errors come from the click that typer bundles, whose classes are not click's own.
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            context = getattr(error, "ctx", None)
            command = context.command_path if context is not None else "unlearnkit"
            error_line(f"{error.format_message().rstrip('.')}; see `{command} --help`.")
            sys.exit(EXIT_BAD_INPUT)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def end_of_batch(summary: str, failed: list[str], failure: str) -> None:
    """Print a batch's one-line ``summary`` (a sweep's points, a sweep's attacks); when some ``failed``, name them
    on stderr with ``failure`` (where the reasons are, what to do) and exit 5."""
    Console(emoji=False).print(summary, markup=False, highlight=False)
    if failed:
        error_line(f"{len(failed)} {failure.format(names=', '.join(failed))}")
        raise typer.Exit(EXIT_SWEEP_FAILURES)


def error_line(message: str) -> None:
    """One red ``error:`` and the message as plain text (paths and ``[q, v, ffn]`` are not rich markup)."""
    from rich.text import Text

    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


