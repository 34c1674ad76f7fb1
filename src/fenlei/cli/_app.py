"""The typer app, its consoles and shared options, and the entry point that turns a user's
mistake into one line on stderr and exit code 2."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fenlei._version import __version__
from fenlei.config import PRESETS
from fenlei.errors import FenleiError

__all__ = ["app", "err", "main", "out"]

app = typer.Typer(
    name="fenlei",
    help="fenlei (分类): train, evaluate and use text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"fenlei {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """fenlei (分类): train, evaluate and use text classifiers."""


PresetOpt = Annotated[str, typer.Option("--preset", "-p", help=" | ".join(PRESETS))]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (overrides --preset).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a setting: --set train.epochs=3 (repeatable)."),
]
TextColOpt = Annotated[
    list[str] | None,
    typer.Option("--text-col", help="Text column; repeat to join several columns."),
]
LabelColOpt = Annotated[str | None, typer.Option("--label-col", help="Label column.")]


def _overrides(
    sets: list[str] | None,
    text_cols: list[str] | None = None,
    label_col: str | None = None,
    multi_label: bool = False,
    label_sep: str | None = None,
) -> list[str]:
    items = list(sets or [])
    if text_cols:
        items.append(f"data.text_cols={json.dumps(text_cols)}")
    if label_col:
        items.append(f"data.label_col={json.dumps(label_col)}")
    if multi_label:
        items.append("data.multi_label=true")
    if label_sep:
        items.append(f"data.label_sep={json.dumps(label_sep)}")
    return items


def _usage_error(exc: typer.TyperException) -> int:
    """A usage mistake as one ``error:`` line and where to look, like every other error.

    (typer 0.29 vendors click: its UsageError and ClickException derive TyperException.)
    """
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "fenlei"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err.print(
        f"[red]error:[/red] {escape(message)} (see `{escape(command)} -h`)",
        highlight=False,
        soft_wrap=True,
    )
    return int(getattr(exc, "exit_code", 2))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fenlei`` command; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # not standalone: usage errors come here, to be shown as one line like ours
        code = app(args=argv, prog_name="fenlei", standalone_mode=False)
    except typer.TyperException as exc:
        return _usage_error(exc)
    except FenleiError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted; `fenlei train ... --resume` continues from the last epoch")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code if isinstance(code, int) else 0
