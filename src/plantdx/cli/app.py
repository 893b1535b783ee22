"""The ``plantdx`` Typer app and what every command shares: the settings options, the consoles, a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from plantdx.config import Settings, load_settings

app = typer.Typer(
    name="plantdx",
    help="Diagnose plant diseases from leaf photos, and run the model lifecycle around it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Check, split and describe a class-folder dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (see configs/).", show_default=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one setting, e.g. --set train.lr=0.001 (repeatable).",
        show_default=False,
    ),
]
RootArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dataset folders (one folder per class), each a path or domain=path (field=..., nonleaf=...). "
        "Default: dataset.root of the settings.",
        show_default=False,
    ),
]


def settings_from(config: Path | None, overrides: list[str] | None, roots: list[str] | None = None) -> Settings:
    items = list(overrides or [])
    if roots:
        items.append(f"dataset.root={json.dumps([str(r) for r in roots])}")
    return load_settings(config, items)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def command_line(name: str, config: Path | None, overrides: list[str] | None) -> str:
    """The command as a person would retype it (recorded in result files and bundle cards)."""
    parts = ["plantdx", name]
    if config is not None:
        parts += ["-c", str(config)]
    for item in overrides or []:
        parts += ["--set", item]
    return " ".join(parts)
