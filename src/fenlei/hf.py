"""Export a ``transformer.v2`` run folder as a Hugging Face model folder.

The folder loads without fenlei: ``AutoModelForSequenceClassification.from_pretrained``,
``AutoTokenizer.from_pretrained`` and ``transformers.pipeline("text-classification")`` read
it, with ``id2label``/``label2id`` set to the run's labels. It holds the model
(``config.json``, ``model.safetensors``), the tokenizer (``tokenizer.json``,
``tokenizer_config.json``) and a model card (``README.md``: data, metrics, labels, intended
use, what transformers does differently from fenlei).

What ``transformers`` cannot apply is folded in exactly or written down:

* the calibration temperature: the final linear layer's weight and bias are divided by it
  (``logits / T`` exactly), so the pipeline's probabilities are fenlei's calibrated ones;
* a one-logit binary head (``model.single_logit``) becomes a two-row head ``[0, z]``, whose
  softmax is fenlei's ``[1 - sigmoid(z), sigmoid(z)]``;
* thresholds, the reject point and the head+tail cut of long texts are fenlei's decision
  rule and encoder, not the model's: the model card states them.

Before anything is renamed into place the written folder is loaded back with
``transformers`` and compared with fenlei's predictor on sample texts.

Example:
    >>> export_hf("runs/minilm", "hf/minilm")  # doctest: +SKIP
    PosixPath('hf/minilm')
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fenlei.artifact import LoadedRun, load_run
from fenlei.calibrate import Calibration, read_calibration
from fenlei.errors import ArtifactError, ConfigError
from fenlei.files import staged_folder, umask_mode
from fenlei.predict import Predictor

__all__ = ["HF_ARCHITECTURE", "SAMPLE_TEXTS", "export_hf"]

logger = logging.getLogger(__name__)

HF_ARCHITECTURE = "transformer.v2"
SAMPLE_TEXTS = (
    "where is my parcel? it should have arrived last week",
    "我要退款",
    "ok",
    "can I change the delivery address of an order that has already shipped",
)
_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}  # fenlei's short names
_DEFAULT_SPECIAL = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _check_architecture(run: LoadedRun) -> None:
    architecture = run.config.model.architecture
    if architecture == HF_ARCHITECTURE:
        return
    if architecture == "transformer.v1":
        raise ConfigError(
            f"{run.run_dir} uses transformer.v1 (fenlei's mean-pooled head), which transformers "
            f"cannot load; retrain with --set model.architecture={HF_ARCHITECTURE} "
            "or export with --format onnx"
        )
    raise ConfigError(
        f"{run.run_dir} is a {architecture} run; only {HF_ARCHITECTURE} runs export to the "
        "Hugging Face format: use --format onnx"
    )


def _final_linear(model: nn.Module, n_outputs: int) -> tuple[nn.Module, str, nn.Linear]:
    """The classifier's last linear layer (``classifier`` for BERT, ``out_proj`` for RoBERTa)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == n_outputs
    ]
    if not found:
        raise ArtifactError(f"no linear layer with {n_outputs} outputs in {type(model).__name__}")
    name, layer = found[-1]
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr, layer


@torch.no_grad()
def _fold_head(model: nn.Module, n_outputs: int, temperature: float, two_rows: bool) -> None:
    """Divide the last layer by the temperature; a one-logit head becomes ``[0, z]``."""
    parent, attr, layer = _final_linear(model, n_outputs)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    if two_rows:
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    folded = nn.Linear(layer.in_features, weight.shape[0], dtype=weight.dtype)
    folded.weight.copy_(weight / temperature)
    folded.bias.copy_(bias / temperature)
    setattr(parent, attr, folded)


def _hf_model(run: LoadedRun, calibration: Calibration) -> Any:
    wrapped: Any = run.model
    model = copy.deepcopy(wrapped.hf_model()).float().eval()
    two_rows = run.spec.n_outputs == 1 and not run.multi_label
    _fold_head(model, run.spec.n_outputs, calibration.temperature, two_rows)
    labels = list(run.labels)
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.config.problem_type = (
        "multi_label_classification" if run.multi_label else "single_label_classification"
    )
    return model


def _special_tokens(run: LoadedRun) -> dict[str, str]:
    vocab = run.encoder.tokenizer.get_vocab(with_added_tokens=True)
    found = {key: token for key, token in _DEFAULT_SPECIAL.items() if token in vocab}
    pad = run.encoder.tokenizer.id_to_token(run.encoder.pad_id)
    if pad is not None:
        found["pad_token"] = pad
    return found


def _save_tokenizer(run: LoadedRun, folder: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer.from_str(run.encoder.tokenizer.to_str())
    plain.no_truncation()  # transformers sets truncation and padding per call
    plain.no_padding()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=plain,
        model_max_length=run.config.encoder.max_length,
        padding_side="right",
        truncation_side="left" if run.config.encoder.truncation == "tail" else "right",
        **_special_tokens(run),
    )
    tokenizer.save_pretrained(str(folder))
    # transformers 5 names its class TokenizersBackend, which 4.x cannot resolve; both read
    # the older name
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("dev", "test"):
        scores = metrics.get(split)
        if not isinstance(scores, dict):
            continue
        shown = ", ".join(
            f"{key} {scores[key]:.4f}"
            for key in ("accuracy", "macro_f1", "micro_f1")
            if isinstance(scores.get(key), int | float)
        )
        lines.append(f"| {split} | {scores.get('n', '?')} | {shown} |")
    return lines


def _card(run: LoadedRun, calibration: Calibration) -> str:
    cfg = run.config
    rows = _metrics_lines(run.metrics)
    data = run.metrics.get("data", {})
    sources = ", ".join(f"`{name}`" for name in data) if isinstance(data, dict) else ""
    labels = "\n".join(f"| {i} | {label} |" for i, label in enumerate(run.labels))
    selected = "dev" if "test" not in run.metrics else "test"
    decision = "independent sigmoid per label" if run.multi_label else "softmax over the labels"
    rule = calibration.rule(multi_label=run.multi_label, threshold=cfg.eval.threshold)
    extras = []
    if run.multi_label:
        extras.append(
            f"- fenlei assigns every label whose probability reaches its threshold "
            f"({rule.threshold}); the pipeline returns scores only "
            '(`top_k=None`, `function_to_apply="sigmoid"`).'
        )
    if calibration.abstain_below is not None:
        extras.append(
            f"- fenlei abstains when the top probability is below {calibration.abstain_below:.4f};"
            " the pipeline always answers."
        )
    if cfg.encoder.truncation == "head+tail":
        extras.append(
            f"- fenlei cuts a text longer than {cfg.encoder.max_length} tokens to its first "
            "quarter and last three quarters; transformers cuts the end "
            "(`truncation=True`): long texts may score differently."
        )
    base = _HUB_IDS.get(cfg.model.pretrained or "", cfg.model.pretrained)
    if base and Path(base).exists():  # a local folder is no hub id
        base = None
    fitted = " (fitted on dev)" if calibration.temperature != 1.0 else ""
    front = "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: text-classification",
            "tags:",
            "- fenlei",
            "- text-classification",
            f"base_model: {base}" if base else "",
            "---",
        ]
    ).replace("\n\n", "\n")
    return f"""{front}

# {run.run_dir.name}: text classifier

A `{cfg.model.architecture}` text classifier trained with fenlei (preset `{cfg.preset}`,
encoder `{cfg.model.pretrained}`), exported with `fenlei export --format hf`.
It loads with plain `transformers`; fenlei is not needed.

```python
from transformers import pipeline

classify = pipeline("text-classification", model="PATH_OR_HUB_ID")
classify(["where is my parcel?"], top_k=None, truncation=True)
```

## Intended use

Classifying short texts into the labels below, on text like the training data. It is not
meant for text unlike the training data, for decisions about people without human review,
or for labels it was not trained on.

## Labels ({decision})

| id | label |
| --- | --- |
{labels}

## Data

Trained on {sources or "the run's training table"} ({run.metrics.get("epochs_run", "?")} epochs,
best epoch {run.metrics.get("best_epoch", "?")}). Scores below are on the held-out splits the run
recorded; the `dev` split also chose the epoch (and the temperature), so its score is optimistic
{"" if selected == "test" else "and there is no separate test score"}.

| split | n | scores |
| --- | --- | --- |
{chr(10).join(rows) or "| - | - | not recorded |"}

## Calibration and decisions

- Temperature {calibration.temperature:.4f}{fitted}: folded into the classifier's last
  layer (weight and bias divided by it), so the probabilities here are fenlei's calibrated
  ones.
- Maximum length {cfg.encoder.max_length} tokens (`model_max_length`).
{chr(10).join(extras)}
"""


def _max_difference(run: LoadedRun, calibration: Calibration, folder: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = list(SAMPLE_TEXTS)
    predictor = Predictor(
        run.encoder, run.model, run.labels, multi_label=run.multi_label, calibration=calibration
    )
    expected = predictor.predict_proba(texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    got = torch.sigmoid(logits) if run.multi_label else torch.softmax(logits, dim=-1)
    return float(np.abs(got.numpy() - expected).max())


def export_hf(run_dir: str | Path, out: str | Path, *, tolerance: float = 1e-4) -> Path:
    """Write a ``transformer.v2`` run as a Hugging Face model folder (model, tokenizer, card).

    Args:
        run_dir: a finished single run folder (its manifest is verified first).
        out: the folder to create; it must not exist, or be empty.
        tolerance: largest allowed probability difference between transformers' reading of
            the folder and fenlei's predictor, on sample texts.

    Returns:
        ``out``.

    Raises:
        ConfigError: the run is not a ``transformer.v2`` run, or ``out`` holds files.
        ArtifactError: the run folder is invalid, or the folder disagrees with fenlei.
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--out {target} exists and is not an empty folder; choose a new one")
    run = load_run(run_dir)
    _check_architecture(run)
    calibration = read_calibration(run.run_dir, len(run.labels))
    with staged_folder(target) as staging:
        _hf_model(run, calibration).save_pretrained(str(staging))
        _save_tokenizer(run, staging)
        (staging / "README.md").write_text(_card(run, calibration), encoding="utf-8")
        diff = _max_difference(run, calibration, staging)
        if diff > tolerance:
            raise ArtifactError(
                f"{target}: transformers differs from fenlei by {diff:.2e} > {tolerance}"
            )
        for path in staging.iterdir():  # safetensors creates owner-only files
            path.chmod(umask_mode(folder=False))
        if target.exists():  # an empty folder (checked above): the export takes its place
            target.rmdir()
    logger.info("wrote %s (max probability difference %.1e)", target, diff)
    return target
