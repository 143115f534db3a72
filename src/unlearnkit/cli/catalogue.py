"""The configs shipped with the package: list them, print one, copy one to edit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unlearnkit.cli.common import app
from unlearnkit.errors import UnlearnkitError

configs_app = typer.Typer(rich_markup_mode="markdown", invoke_without_command=True,
                          help="The configs shipped with unlearnkit, by name: `unlearnkit run NAME` runs one from any "
                               "directory.")
app.add_typer(configs_app, name="configs")

Name = Annotated[str, typer.Argument(help="a shipped config's name, e.g. paper/gpt-neo-125m-flora-ihl")]
Resolved = Annotated[bool, typer.Option("--resolved", help="with its base: entries resolved: every key the config "
                                                           "sets, in one file")]


@configs_app.callback()
def configs(context: typer.Context) -> None:
    """List the shipped configs (runs and sweeps), each with the first line of its comment."""
    if context.invoked_subcommand is not None:
        return
    from rich.table import Table

    from unlearnkit.config.catalogue import shipped_configs, shipped_path

    console = Console(emoji=False, highlight=False)
    names = shipped_configs()
    rows = []
    for name in names:
        path = shipped_path(name)
        assert path is not None
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "#")
        rows.append((name, first.lstrip("# ")))
    if sys.stdout.isatty():  # a terminal gets each line cut to its width
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(no_wrap=True, min_width=max(map(len, names)))
        table.add_column(no_wrap=True, overflow="ellipsis")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # a pipe (grep, a file) gets them whole
        width = max(map(len, names))
        typer.echo("\n".join(f"{name:<{width}}  {first}" for name, first in rows))
    console.print(f"\n{len(names)} configs. `unlearnkit configs show NAME` prints one, `unlearnkit configs cp NAME "
                  "FILE` copies one to edit, `unlearnkit run NAME` runs one (sweeps: `unlearnkit sweep NAME`).",
                  markup=False)


@configs_app.command("show")
def show(name: Name, resolved: Resolved = False) -> None:
    """Print a shipped config as written (or, with --resolved, with its base resolved)."""
    typer.echo(_text(name, resolved), nl=False)


@configs_app.command("cp", epilog="Example: `unlearnkit configs cp paper/gpt-neo-125m-flora-ihl my-run.yaml`, edit "
                                  "it, then `unlearnkit run my-run.yaml`.")
def cp(name: Name, file: Annotated[Path, typer.Argument(help="the new file; an existing file is never replaced")],
       resolved: Resolved = False) -> None:
    """Copy a shipped config to FILE to edit it (its `base:` still names a shipped config, which resolves from
    anywhere; --resolved writes every key instead)."""
    from unlearnkit.io import atomic_write_text

    text = _text(name, resolved)
    target = file.expanduser()
    if target.exists() or target.is_symlink():
        raise UnlearnkitError(f"{file} exists, and a copy never replaces a file; choose another name.")
    if not target.parent.is_dir():
        raise UnlearnkitError(f"The folder {target.parent} does not exist; create it or choose another path.")
    atomic_write_text(target, text)
    typer.echo(f"Copied {name} to {file}; run it with `unlearnkit run {file}`.")


def _text(name: str, resolved: bool) -> str:
    import yaml

    from unlearnkit.config.catalogue import shipped_configs, shipped_path
    from unlearnkit.config.loading import read_config
    from unlearnkit.errors import did_you_mean

    path = shipped_path(name)
    if path is None:
        raise UnlearnkitError(f"No shipped config is named {name}; `unlearnkit configs` lists them."
                              f"{did_you_mean(name.removesuffix('.yaml'), shipped_configs())}")
    if not resolved:
        return path.read_text(encoding="utf-8")
    if "sweeps" in path.parts or "accelerate" in path.parts:
        raise UnlearnkitError(f"--resolved applies to run configs, and {name} is not one; drop --resolved (a sweep's "
                              f"points: `unlearnkit sweep {name} --dry-run`).")
    body = yaml.safe_dump(read_config(path), sort_keys=False, default_flow_style=None, width=115)
    return f"# {name}, with its base: entries resolved (unlearnkit configs show {name} prints it as written).\n{body}"
