"""`fenlei evaluate`, `predict`, `explain` and `export`: commands that use a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.markup import escape

from fenlei.cli._app import (
    LabelColOpt,
    TextColOpt,
    _overrides,
    app,
    err,
    out,
)
from fenlei.cli._views import _metrics_table, _per_class_table, _predictions_table, _reject_table
from fenlei.cli.scaling import (
    CpusOpt,
    RayAddressOpt,
    RayOpt,
    WorkersOpt,
    predict_on_ray,
    ray_options,
)

__all__ = ["evaluate", "explain", "export", "predict"]


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[Path, typer.Argument(help="Labelled table to evaluate on.")],
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write metrics here.")
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Write a confusion-matrix PNG here.")] = None,
) -> None:
    """Evaluate a run folder on a labelled table.

    Example: fenlei evaluate runs/r1 test.csv --json test-metrics.json --plots plots/
    """
    from fenlei.config import DataConfig, load_config
    from fenlei.data import load_table
    from fenlei.evaluate import evaluate as evaluate_metrics
    from fenlei.evaluate import plot_confusion
    from fenlei.loader import open_predictor
    from fenlei.runtime import configure_torch

    configure_torch()
    predictor = open_predictor(run)
    data_cfg = predictor.info().data or DataConfig()  # the columns the run was trained on
    if text_col or label_col:
        data_cfg = load_config(None, _overrides(None, text_col, label_col)).data.model_copy(
            update={"multi_label": data_cfg.multi_label, "label_sep": data_cfg.label_sep}
        )
    metrics = evaluate_metrics(predictor, load_table(data, data_cfg))
    out.print(_metrics_table(metrics, escape(str(data))))
    out.print(_per_class_table(metrics, escape(str(data))))
    if "reject" in metrics:
        out.print(_reject_table(metrics["reject"]))
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    if plots and "confusion_matrix" in metrics:
        plot_confusion(
            metrics["confusion_matrix"],
            predictor.labels,
            plots / "confusion_matrix.png",
            split=data.name,
        )
        out.print(f"plot: {plots / 'confusion_matrix.png'}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Table of texts.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="CSV to write.")] = None,
    text_col: TextColOpt = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels shown per text.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    on_error: Annotated[
        Literal["fail", "skip"],
        typer.Option(
            help="--file rows with an empty or invalid text: fail (write nothing) or skip "
            "(leave them out, list them on stderr)."
        ),
    ] = "fail",
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    cpus_per_worker: CpusOpt = 1.0,
) -> None:
    """Classify texts given on the command line, or a whole file into a CSV.

    With --ray, --file is read by Ray Data and predicted by --workers actors into --out
    (.parquet or .csv: id, predicted_label, score, p_<label>).

    Example: fenlei predict runs/demo "where is my order?"

    Example: fenlei predict runs/demo --file in.csv --out out.csv
    """
    from fenlei.classifier import predict_file
    from fenlei.config import DataConfig
    from fenlei.data import check_text
    from fenlei.errors import DataError
    from fenlei.loader import open_predictor
    from fenlei.runtime import configure_torch

    if not texts and not file:
        raise typer.BadParameter("give texts to classify, or --file with --out")
    if file and not out_file:
        raise typer.BadParameter("--file needs --out (the CSV to write)")
    for number, text in enumerate(texts or [], start=1):
        if problem := check_text(text):  # argv bytes that are not UTF-8 arrive as U+DC80-DCFF
            raise DataError(
                f"text argument {number} {text[:40]!a} {problem}; pass the text as UTF-8 "
                "(check the terminal's encoding or the locale, e.g. LANG=C.UTF-8)"
            )
        if not text.strip():  # as the service refuses it (422)
            raise DataError(f"text argument {number} is empty; give a text to classify")
    if ray and file and out_file:
        opts = ray_options(ray_address, workers, cpus_per_worker=cpus_per_worker)
        data_cfg = DataConfig(text_cols=text_col) if text_col else DataConfig()
        n = predict_on_ray(run, file, out_file, opts, data_cfg)
        err.print(f"wrote {n} predictions to {out_file}")
        if not texts:
            return
        file = None
    configure_torch()
    predictor = open_predictor(run)
    if file and out_file:
        cfg = DataConfig(text_cols=text_col) if text_col else DataConfig()
        skipped: list[DataError] | None = [] if on_error == "skip" else None
        n = predict_file(predictor, file, out_file, cfg, skipped=skipped)
        err.print(f"wrote {n} predictions to {out_file}")
        if skipped:
            err.print(f"skipped {len(skipped)} rows (--on-error skip):", highlight=False)
            for skip in skipped[:10]:
                err.print(f"  {escape(str(skip))}", highlight=False, soft_wrap=True)
            if len(skipped) > 10:
                err.print(f"  ... and {len(skipped) - 10} more", highlight=False)
    if texts:
        predictions = predictor.predict(texts)
        if as_json:
            from fenlei.serve.schemas import TextPrediction  # the service's shape

            for text, p in zip(texts, predictions, strict=True):
                row = {"text": text, **TextPrediction.from_prediction(p, top_k).model_dump()}
                typer.echo(json.dumps(row, ensure_ascii=False))
        else:
            out.print(_predictions_table(list(texts), predictions, top_k))


def _shade(strength: float) -> str:
    """A rich style for a word: green towards the label, red away, paler when weaker."""
    if abs(strength) < 0.1:
        return ""
    fade = int(255 - 150 * min(1.0, abs(strength)))
    rgb = (fade, 255, fade) if strength > 0 else (255, fade, fade)
    return "black on rgb({},{},{})".format(*rgb)


def _explanation_view(number: int, e: Any, top_k: int) -> Any:
    """One explanation for the terminal: header, the coloured text, words for and against."""
    from rich.console import Group
    from rich.text import Text

    header = Text.assemble((f"{number}. ", "bold"), (e.label, "bold"), f"  p={e.probability:.3f}")
    if e.label != e.predicted:
        header.append(f"  (predicted: {e.predicted})")
    header.append(f"  {e.method}", style="dim")
    if e.method == "integrated-gradients":
        header.append(f", delta {e.delta:+.4f}", style="dim")
    body = Text()
    peak = max((abs(t.score) for t in e.tokens), default=0.0) or 1.0
    at = 0
    for t in e.tokens:
        body.append(e.text[at : t.start])
        body.append(e.text[t.start : t.end], style=_shade(t.score / peak))
        at = t.end
    body.append(e.text[at:])
    lines = [header, body]
    for title, words in (("for", e.top(top_k)), ("against", e.top(top_k, against=True))):
        listed = ", ".join(f"{t.token} {t.score:+.3f}" for t in words) or "-"
        lines.append(Text.assemble((f"{title}: ", "bold"), listed))
    if e.truncated:
        lines.append(
            Text(
                f"note: cut to {e.max_length} tokens like the model cuts it; "
                "words outside that part were not read",
                style="yellow",
            )
        )
    if e.unknown:
        lines.append(Text(f"note: {e.unknown} words are unknown to the encoder", style="yellow"))
    return Group(*lines, Text(""))


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to explain.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Table of texts.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="JSONL to write (tokens, spans, scores).")
    ] = None,
    text_col: TextColOpt = None,
    target: Annotated[
        str | None, typer.Option(help="Explain this label instead of the prediction.")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Words shown for and against.")] = 5,
) -> None:
    """Show which words pushed the model towards its label (or --target's), and which away.

    Example: fenlei explain runs/demo "where is my parcel?" --target refund

    Example: fenlei explain runs/demo --file in.csv --out why.jsonl
    """
    from fenlei.config import DataConfig
    from fenlei.data import check_text
    from fenlei.errors import DataError
    from fenlei.explain_table import Explainer, explain_file
    from fenlei.loader import open_predictor
    from fenlei.runtime import configure_torch

    if not texts and not file:
        raise typer.BadParameter("give texts to explain, or --file with --out")
    if file and not out_file:
        raise typer.BadParameter("--file needs --out (the JSONL to write)")
    for number, text in enumerate(texts or [], start=1):
        if problem := check_text(text) or ("is empty" if not text.strip() else None):
            raise DataError(
                f"text argument {number} {text[:40]!a} {problem}; give a text to explain"
            )
    configure_torch()
    predictor = open_predictor(run, backend="torch")
    explainer = cast("Explainer", predictor)  # one model and an ensemble both explain
    if file and out_file:
        cfg = DataConfig(text_cols=text_col) if text_col else predictor.info().data
        n = explain_file(explainer, file, out_file, cfg, target=target)
        err.print(f"wrote {n} explanations to {escape(str(out_file))}")
    if texts:
        explanations = explainer.explain(texts, target=target)
        if out_file and not file:
            lines = (json.dumps(e.to_json(), ensure_ascii=False) for e in explanations)
            out_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            err.print(f"wrote {len(explanations)} explanations to {escape(str(out_file))}")
            return
        for number, e in enumerate(explanations, start=1):
            out.print(_explanation_view(number, e, top_k))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    format_: Annotated[
        Literal["onnx", "hf"],
        typer.Option(
            "--format",
            help="onnx: model.onnx in the run folder; hf: a Hugging Face folder (--out).",
        ),
    ] = "onnx",
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to create (--format hf).")
    ] = None,
) -> None:
    """Export a run folder's model to ONNX (model.onnx); the server then uses ONNX Runtime.
    An ensemble exports each member. --format hf writes a transformer.v2 run as a folder
    that transformers loads (docs/interop.md).

    Example: fenlei export runs/demo

    Example: fenlei export runs/minilm --format hf --out hf/minilm
    """
    if format_ == "hf":
        from fenlei.hf import export_hf

        if out_dir is None:
            raise typer.BadParameter("--format hf needs --out (the folder to create)")
        path = export_hf(run, out_dir)
        out.print(f"wrote [bold]{escape(str(path))}[/bold] (transformers loads it)")
        return
    if out_dir is not None:
        raise typer.BadParameter("--out is for --format hf; ONNX goes into the run folder")
    from fenlei.loader import export_run

    for written in export_run(run):
        out.print(f"wrote [bold]{escape(str(written))}[/bold] (manifest updated)")
