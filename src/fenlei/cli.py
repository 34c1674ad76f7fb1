"""The ``fenlei`` command: a thin typer skin over the library.

Each command parses its options, loads the config, calls one library function and shows
the result with rich. A user's mistake (any :class:`~fenlei.errors.FenleiError`) becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fenlei.config import PRESETS
from fenlei.errors import FenleiError

__all__ = ["app", "main"]

app = typer.Typer(
    name="fenlei",
    help="fenlei (分类): train, evaluate and use text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

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


def _summary_table(summaries: list[Any]) -> Table:
    table = Table(title="Data", show_lines=False)
    for col in ("split", "rows", "labels", "chars (min / median / p95 / max)"):
        table.add_column(col)
    for s in summaries:
        counts = ", ".join(f"{k} {v}" for k, v in s.label_counts.items())
        lengths = f"{s.chars_min} / {s.chars_median:.0f} / {s.chars_p95:.0f} / {s.chars_max}"
        table.add_row(escape(s.source), str(s.rows), escape(counts), lengths)
    return table


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    from fenlei.predict import HEADLINE_METRICS

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in HEADLINE_METRICS:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def _per_class_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="Per class")
    for col in ("label", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for name, m in metrics["per_class"].items():
        table.add_row(
            escape(name),
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['f1']:.3f}",
            str(m["support"]),
        )
    return table


def _predictions_table(texts: list[str], predictions: list[Any], top_k: int) -> Table:
    table = Table(title="Predictions")
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    table.add_column(f"top {top_k}")
    for text, pred in zip(texts, predictions, strict=True):
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in pred.top(top_k))
        label = " | ".join(pred.labels) if len(pred.labels) > 1 else pred.label
        if pred.abstained:
            label = f"abstain (best: {pred.label})"
        table.add_row(escape(text), escape(label), escape(top))
    return table


def _show_fitted(metrics: Any) -> None:
    """One line each for the temperature and the tuned decision; a warning for a target
    that dev could not meet."""
    cal = metrics.calibration
    if cal is not None:
        eces = ", ".join(
            f"{split} {cal.ece_before[split]:.3f} -> {cal.ece_after[split]:.3f}"
            for split in cal.ece_before
        )
        how = f"temperature {cal.temperature:.3f}" if cal.note is None else cal.note
        out.print(f"calibration: {escape(how)}; ECE ({cal.bins} bins) {eces}")
    decision = metrics.decision
    if decision is None:
        return
    if decision.thresholds is not None:
        goal = (
            "best F1" if decision.min_precision is None else f"precision {decision.min_precision}"
        )
        shown = ", ".join(f"{k} {v:.2f}" for k, v in list(decision.thresholds.items())[:8])
        more = " ..." if len(decision.thresholds) > 8 else ""
        out.print(f"thresholds per label ({goal} on dev): {escape(shown)}{more}")
    if decision.unmet:
        missed = ", ".join(f"{k} (at best {v:.3f})" for k, v in decision.unmet.items())
        err.print(
            f"[yellow]warning:[/yellow] no threshold reaches precision "
            f"{decision.min_precision} on dev for {escape(missed)}; they keep their best-F1 "
            "threshold (lower --min-precision, or add dev examples of these labels)"
        )
    if decision.abstain_below is not None:
        where = "; ".join(
            f"{split} coverage {v['coverage']:.3f}, accuracy {v['accuracy']:.3f}"
            for split, v in decision.coverage.items()
        )
        out.print(f"reject option: abstain below confidence {decision.abstain_below:.3f} ({where})")
    elif decision.note is not None:
        err.print(f"[yellow]warning:[/yellow] {escape(decision.note)}")


def _reject_table(reject: dict[str, Any]) -> Table:
    table = Table(title="Coverage and accuracy (the most confident texts kept)")
    for col in ("coverage", "accuracy", "min confidence", ""):
        table.add_column(col, justify="right")
    chosen = reject["chosen"]
    for point in reject["curve"]:
        table.add_row(
            f"{point['coverage']:.3f}", f"{point['accuracy']:.4f}", f"{point['threshold']:.3f}", ""
        )
    table.add_row(
        f"{chosen['coverage']:.3f}",
        f"{chosen['accuracy']:.4f}",
        f"{chosen['threshold']:.3f}",
        "chosen (the run's reject point)" if chosen["threshold"] > 0 else "chosen (no reject)",
        style="bold",
    )
    return table


def _show_training_result(result: Any) -> None:
    metrics = result.metrics
    history = result.history
    best = next((r for r in history if r.epoch == metrics.best_epoch), None)
    if best is not None and best.param:  # a solved family: one record per setting tried
        tried = "; ".join(r.param_text() for r in history)
        which = f"best {best.param_text()} (tried {tried})"
    else:
        which = f"best epoch {metrics.best_epoch} of {metrics.epochs_run}"
    out.print(f"{which}, {metrics.train_seconds:.1f}s")
    _show_fitted(metrics)
    out.print(_metrics_table(metrics.dev.to_json(), "Dev"))
    if metrics.test is not None:
        out.print(_metrics_table(metrics.test.to_json(), "Test"))
        out.print(_per_class_table(metrics.test.to_json()))
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")


def _run_training(cfg: Any, splits: Any, out_dir: Path, *, resume: bool, overwrite: bool) -> Any:
    from fenlei.pipeline import train_run
    from fenlei.progress import RichProgress
    from fenlei.runtime import configure_torch

    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    out.print(_summary_table(splits.summaries()))
    return train_run(
        cfg,
        splits,
        out_dir,
        resume=resume,
        overwrite=overwrite,
        progress=RichProgress(cfg.train.monitor),
    )


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training table: .csv .tsv .jsonl .parquet (.gz).")],
    dev: Annotated[Path | None, typer.Option(help="Dev table (else split from DATA).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test table (else split from DATA).")] = None,
    preset: PresetOpt = "linear",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    multi_label: Annotated[bool, typer.Option(help="Rows may carry several labels.")] = False,
    label_sep: Annotated[str | None, typer.Option(help="Label separator in CSV cells.")] = None,
    min_precision: Annotated[
        float | None,
        typer.Option(
            help="Multi-label: tune each label's threshold on dev for the highest recall at "
            "this precision (eval.min_precision; default: the best F1)."
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/latest"
    ),
    resume: Annotated[
        bool,
        typer.Option(help="Continue from the run folder's checkpoint (a complete run stays)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a finished run in --out (only fenlei's own files).")
    ] = False,
) -> None:
    """Train a classifier on a labelled table and write a run folder.

    Example: fenlei train reviews.csv --dev dev.csv --preset lstm --set train.epochs=5 -o runs/r1
    """
    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.models import check
    from fenlei.pipeline import prepare_splits

    overrides = _overrides(set_, text_col, label_col, multi_label, label_sep)
    if min_precision is not None:
        overrides.append(f"eval.min_precision={min_precision}")
    cfg = load_config(config or preset, overrides)
    check(cfg)
    train_set = load_table(data, cfg.data)
    dev_set = load_table(dev, cfg.data) if dev else None
    test_set = load_table(test, cfg.data) if test else None
    splits = prepare_splits(cfg.data, train_set, dev_set, test_set)
    result = _run_training(cfg, splits, out_dir, resume=resume, overwrite=overwrite)
    _show_training_result(result)


DEMO_TEXTS = [
    "hi, my parcel still hasn't arrived, can you check where it is?",
    "I want my money back for the broken blender",
    "我忘记密码了，登录不了怎么办",
    "你们周末几点开门？",
    "can I talk to a real person please",
    "这个耳机支持蓝牙5.3吗",
]


# What a small, noisy dataset like the bundled intents needs from the linear preset.
DEMO_LINEAR_SETTINGS = ("model.char_ngram_min=3", "train.batch_size=32")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/demo"
    ),
    preset: PresetOpt = "linear",
    set_: SetOpt = None,
) -> None:
    """Train on the bundled English + Chinese support-intent dataset and show results.

    With the linear preset the demo turns on character n-grams and batches of 32, which
    suit a small set of short, typo-laden messages (test accuracy 0.76 instead of 0.72);
    --set overrides them.

    Example: fenlei demo --preset lstm --out runs/demo-lstm
    """
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path, load_table
    from fenlei.models import check
    from fenlei.pipeline import prepare_splits

    small_data = list(DEMO_LINEAR_SETTINGS) if preset == "linear" else []
    cfg = load_config(preset, [*small_data, *(set_ or [])])
    check(cfg)
    splits = prepare_splits(
        cfg.data,
        load_table(bundled_dataset_path("train"), cfg.data),
        load_table(bundled_dataset_path("dev"), cfg.data),
        load_table(bundled_dataset_path("test"), cfg.data),
    )
    result = _run_training(cfg, splits, out_dir, resume=False, overwrite=True)
    _show_training_result(result)
    out.print(_predictions_table(DEMO_TEXTS, result.predictor.predict(DEMO_TEXTS), 3))


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
    out.print(_per_class_table(metrics))
    if "reject" in metrics:
        out.print(_reject_table(metrics["reject"]))
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    if plots and "confusion_matrix" in metrics:
        plot_confusion(
            metrics["confusion_matrix"], predictor.labels, plots / "confusion_matrix.png"
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
) -> None:
    """Classify texts given on the command line, or a whole file into a CSV.

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
    configure_torch()
    predictor = open_predictor(run)
    if file and out_file:
        cfg = DataConfig(text_cols=text_col) if text_col else DataConfig()
        n = predict_file(predictor, file, out_file, cfg)
        err.print(f"wrote {n} predictions to {out_file}")
    if texts:
        predictions = predictor.predict(texts)
        if as_json:
            for text, p in zip(texts, predictions, strict=True):
                row = {"text": text, "label": p.label, "score": p.score, "top": p.top(top_k)}
                row["abstained"] = p.abstained
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
    from fenlei.explain import Explainer, explain_file
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


def _named_runs(runs: list[str]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for item in runs:
        name, sep, path = item.partition("=")
        folder = Path(path) if sep else Path(item)
        key = name if sep else folder.resolve().name
        if key in named:
            raise typer.BadParameter(f"two runs are named {key!r}; name them: NAME=RUN")
        named[key] = folder
    return named


@app.command()
def serve(
    runs: Annotated[list[str], typer.Argument(help="Run folders to serve (NAME=RUN to rename).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most texts per model call.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Batching wait (ms).")] = 2.0,
    max_texts: Annotated[int, typer.Option(min=1, help="Most texts per request.")] = 256,
    max_chars: Annotated[int, typer.Option(min=1, help="Most characters per text.")] = 10_000,
    max_explain_texts: Annotated[
        int, typer.Option(min=1, help="Most texts per explain request.")
    ] = 8,
    max_batch_chars: Annotated[
        int, typer.Option(min=1, help="Most characters per model call (fairness budget).")
    ] = 8_192,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            min=0, help="Most request body bytes (0 = max-texts * max-chars * 6 + 64 KiB)."
        ),
    ] = 0,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Most bytes of request line + headers.")
    ] = 16_384,
    body_timeout_s: Annotated[
        float, typer.Option(min=0.001, help="Seconds to send a whole body (else 408).")
    ] = 30.0,
    token: Annotated[
        str | None, typer.Option(envvar="FENLEI_TOKEN", help="Require this bearer token on /v1.")
    ] = None,
    backend: Annotated[
        Literal["auto", "torch", "onnx"],
        typer.Option(help="auto: ONNX Runtime when the run folder holds model.onnx (CPU)."),
    ] = "auto",
    device: Annotated[
        Literal["auto", "cpu", "cuda"],
        typer.Option(help="auto: the GPU when torch sees one."),
    ] = "auto",
    drift_window: Annotated[int, typer.Option(min=10, help="Texts in the drift window.")] = 1000,
    threads: Annotated[
        int, typer.Option(min=0, help="Inference threads (0 = library default).")
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="Batches per model that may run at once (0 = auto: one per free core for "
            "transformers, one for other models).",
        ),
    ] = 0,
) -> None:
    """Serve run folders over HTTP: predictions, /metrics, drift, a page at /.

    Example: fenlei serve runs/demo intents=runs/r1 --port 8000 --max-batch-size 64
    """
    try:
        from fenlei.serve.app import serve as run_server
        from fenlei.serve.schemas import serve_settings
    except ImportError as exc:
        from fenlei.errors import MissingExtraError

        raise MissingExtraError(exc.name or "fastapi", "serve", "fenlei serve") from exc
    settings = serve_settings(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_texts=max_texts,
        max_chars=max_chars,
        max_explain_texts=max_explain_texts,
        max_batch_chars=max_batch_chars,
        max_body_bytes=max_body_bytes or None,
        max_header_bytes=max_header_bytes,
        body_timeout_s=body_timeout_s,
        token=token or None,
        backend=backend,
        device=device,
        drift_window=drift_window,
        threads=threads or None,
        workers=workers or None,
    )
    run_server(_named_runs(runs), settings, host=host, port=port)


@app.command()
def export(run: Annotated[Path, typer.Argument(help="Run folder.")]) -> None:
    """Export a run folder's model to ONNX (model.onnx); the server then uses ONNX Runtime.
    An ensemble exports each member.

    Example: fenlei export runs/demo
    """
    from fenlei.loader import export_run

    for path in export_run(run):
        out.print(f"wrote [bold]{escape(str(path))}[/bold] (manifest updated)")


def _ensemble_table(result: Any) -> Table:
    table = Table(title=f"Ensemble ({result.weighting} weights)")
    for col in ("model", "weight", "dev acc", "dev macro-F1"):
        table.add_column(col, justify="left" if col == "model" else "right")
    if result.test is not None:
        table.add_column("test acc", justify="right")
        table.add_column("test macro-F1", justify="right")
    rows = [(escape(m.name), f"{m.weight:.3f}", m.dev, m.test) for m in result.members]
    for i, (name, weight, dev, test) in enumerate(
        [*rows, ("ensemble", "", result.dev, result.test)]
    ):
        cells = [name, weight, f"{dev.accuracy:.4f}", f"{dev.macro_f1:.4f}"]
        if test is not None:
            cells += [f"{test.accuracy:.4f}", f"{test.macro_f1:.4f}"]
        table.add_row(*cells, style="bold" if i == len(rows) else None)
    return table


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (same labels).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Ensemble folder to write (new).")],
    weights: Annotated[
        Literal["equal", "tuned"],
        typer.Option(help="equal, or tuned: least log-loss of the mean on --data (dev only)."),
    ] = "equal",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dev table (needed): scores, weights and the drift reference."),
    ] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="Test table, scored for the report only.")
    ] = None,
) -> None:
    """Combine run folders into one ensemble run folder that averages their probabilities.

    The ensemble predicts, evaluates, serves and exports like one model; its members are
    copied in, each with its own manifest, tokenizer and backend.

    Example: fenlei ensemble runs/nbsvm runs/linear --out runs/ens --data dev.csv

    Example: fenlei ensemble runs/a runs/b runs/c -o runs/abc --weights tuned --data dev.csv
    """
    from fenlei.combine import build_ensemble
    from fenlei.runtime import configure_torch

    configure_torch()
    result = build_ensemble(runs, out_dir, weights=weights, data=data, test=test)
    out.print(_ensemble_table(result))
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")


def _trial_line(trial: Any, best: Any, metric: str, budget: float | None) -> str:
    if trial.state == "complete":
        score = f"dev {metric} {trial.value:.4f}"
        if trial.latency_ms is not None:
            score += f", p50 {trial.latency_ms:.2f} ms"
    elif trial.state == "pruned":
        score = f"pruned after epoch {trial.pruned_at}" if trial.pruned_at else "pruned"
    else:
        score = trial.state
    seconds = f" {trial.seconds:.1f}s" if trial.seconds is not None else ""
    if best is None:
        so_far = "none within budget yet" if budget is not None else "none yet"
    else:
        so_far = f"{best.value:.4f} (trial {best.number})"
    settings = " ".join(trial.overrides)
    return f"trial {trial.number} [{trial.preset}] {score}{seconds} · best {so_far} · {settings}"


def _tune_table(result: Any) -> Table:
    front = result.budget_ms is not None
    shown = (
        result.pareto
        if front
        else sorted((t for t in result.trials if t.value is not None), key=lambda t: -t.value)[:5]
    )
    table = Table(title="Pareto front (accuracy vs latency)" if front else "Best trials")
    for col in ("trial", "family", f"dev {result.metric}", "p50 ms", "settings"):
        table.add_column(col, justify="left" if col in ("family", "settings") else "right")
    for t in shown:
        latency = f"{t.latency_ms:.2f}" if t.latency_ms is not None else "-"
        style = "bold" if t.number == result.best.number else None
        cells = [str(t.number), t.preset or "", f"{t.value:.4f}", latency, " ".join(t.overrides)]
        table.add_row(*(escape(c) for c in cells), style=style)
    return table


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="Training table: .csv .tsv .jsonl .parquet (.gz).")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder for the winner (study beside it).")
    ],
    dev: Annotated[Path | None, typer.Option(help="Dev table (else split from DATA).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test table (else split from DATA).")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="Tune one family: " + " | ".join(PRESETS))
    ] = None,
    families: Annotated[
        str | None,
        typer.Option(help="Or choose among families too: e.g. linear,nbsvm,lstm,minilm."),
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials in the study (a resumed one counts).")] = 20,
    time_limit: Annotated[
        float | None, typer.Option("--time", help="Seconds to spend (no trial that ends later).")
    ] = None,
    latency_budget: Annotated[
        float | None,
        typer.Option(help="ms: most accurate model whose batch-1 p50 here fits the budget."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default sqlite:///OUT.optuna.db).")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: data + families).")
    ] = None,
    set_: SetOpt = None,
    search: Annotated[
        list[str] | None,
        typer.Option(help="Search other choices: --search 'train.lr=[0.001,0.01]' (repeatable)."),
    ] = None,
    metric: Annotated[
        Literal["accuracy", "macro_f1"], typer.Option(help="Dev metric to maximise.")
    ] = "accuracy",
    seed: Annotated[
        int, typer.Option(help="Sampler seed; give each process sharing a study its own.")
    ] = 13,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    multi_label: Annotated[bool, typer.Option(help="Rows may carry several labels.")] = False,
    label_sep: Annotated[str | None, typer.Option(help="Label separator in CSV cells.")] = None,
) -> None:
    """Search a family's settings (or several families) with Optuna; keep the best run.

    The winner's run folder goes to --out, its settings to OUT.toml (fenlei train --config
    OUT.toml retrains it); the study (SQLite by default) resumes when run again.

    Example: fenlei tune train.csv --dev dev.csv --preset linear --trials 30 --out runs/best

    Example: fenlei tune train.csv --families linear,nbsvm,lstm --latency-budget 2 -o runs/fast
    """
    from fenlei.runtime import configure_torch
    from fenlei.tuning import tune as run_tune
    from fenlei.tuning.study import quiet_optuna

    quiet_optuna()  # one line per trial is ours
    configure_torch()

    def show(trial: Any, best: Any) -> None:
        line = escape(_trial_line(trial, best, metric, latency_budget))
        out.print(line, highlight=False, soft_wrap=True)

    try:
        result = run_tune(
            data,
            out=out_dir,
            dev=dev,
            test=test,
            preset=preset,
            families=families,
            overrides=_overrides(set_, text_col, label_col, multi_label, label_sep),
            search=search or [],
            trials=trials,
            timeout=time_limit,
            latency_budget_ms=latency_budget,
            storage=storage,
            study=study,
            metric=metric,
            seed=seed,
            on_trial=show,
        )
    except KeyboardInterrupt:
        err.print("interrupted; run the same fenlei tune command again to resume the study")
        raise typer.Exit(130) from None
    out.print(_tune_table(result))
    best = result.best
    out.print(
        f"winner: trial {best.number} ({escape(best.preset or '')}), dev {metric} "
        f"{best.value:.4f}" + (f", p50 {best.latency_ms:.2f} ms" if best.latency_ms else "")
    )
    if result.pareto_plot is not None:
        out.print(f"Pareto plot: [bold]{escape(str(result.pareto_plot))}[/bold]")
    out.print(f"settings: [bold]{escape(str(result.config_path))}[/bold]")
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fenlei`` command; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # standalone mode: click reports usage errors itself (exit 2) and raises SystemExit
        app(args=argv, prog_name="fenlei")
    except FenleiError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; `fenlei train ... --resume` continues from the last epoch")
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
