"""`fenlei datasets list|get`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import (
    app,
    out,
)

__all__ = ["datasets_app"]


datasets_app = typer.Typer(
    help="Public datasets: list them, download + verify + convert one into the cache.",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("list")
def datasets_list() -> None:
    """List the public datasets fenlei can fetch (name, classes, splits, licence, sha256).

    Example: fenlei datasets list
    """
    from fenlei.datasets import list_datasets

    table = Table(title="fenlei datasets")
    table.add_column("name", no_wrap=True)
    for col in ("language", "classes", "splits", "sha256", "licence", "dataset"):
        table.add_column(col)
    for d in list_datasets():
        table.add_row(
            d.name,
            d.language,
            str(d.n_classes),
            ", ".join(d.splits),
            "published" if d.verified else "unverified",
            escape(d.licence),
            escape(d.title),
        )
    out.print(table)


@datasets_app.command("get")
def datasets_get(
    name: Annotated[str, typer.Argument(help="Dataset name (see `fenlei datasets list`).")],
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Cache folder (default $FENLEI_CACHE).")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Fetch files from this mirror instead.")
    ] = None,
    accept_unverified: Annotated[
        bool,
        typer.Option("--accept-unverified", help="Allow files with no published sha256."),
    ] = False,
) -> None:
    """Download (resumable), verify (sha256) and convert a dataset to text,label CSV tables.

    Example: fenlei datasets get sst2 && fenlei train ~/.cache/fenlei/datasets/sst2/train.csv
    """
    from fenlei.datasets import get

    ds = get(name, cache=cache, base_url=base_url, accept_unverified=accept_unverified)
    for split, path in ds.tables.items():
        out.print(f"{split}: {escape(str(path))} ({ds.rows[split]:,} rows)", highlight=False)
