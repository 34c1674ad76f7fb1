"""Long texts read as windows (encoder.long_text=chunks): the windows, their pooled logits,
and one reading everywhere (training, dev scoring, predict, ONNX Runtime, the server)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, processors

from fenlei.classifier import TextClassifier
from fenlei.config import EncoderConfig, load_config
from fenlei.data import Dataset, LabelSet
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError
from fenlei.models import batched_logits, check
from fenlei.predict import Predictor
from fenlei.run_schema import parse_config
from fenlei.tokenize import Encoder, Windows, train_encoder
from fenlei.train import TrainData
from fenlei.train.objective import loss_for
from fenlei.train.state import dev_metrics

from .conftest import family_overrides
from .test_cli_errors import user_error

CHUNKS = ["encoder.long_text=chunks", "encoder.max_length=8", "encoder.stride=2"]
QUICK = ["train.epochs=1", "eval.report=false"]  # the HTML report is not what is tested
LONG = "can I change the delivery address of an order that has already shipped please"


def _tokenizer(bundled: dict[str, Dataset], template: str = "[CLS] $A [SEP]") -> Tokenizer:
    """A word vocabulary with a post-processor that adds special tokens, as BERT's does."""
    trained = train_encoder(bundled["train"].texts, EncoderConfig(kind="word", vocab_size=600))
    tok = Tokenizer.from_str(trained.tokenizer.to_str())
    tok.add_special_tokens(["[CLS]", "[SEP]"])
    ids = [("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=ids)
    return tok


def _windows_encoder(tok: Tokenizer, **cfg: object) -> Encoder:
    settings = {"kind": "word", "long_text": "chunks", "max_length": 8, "stride": 2, **cfg}
    return Encoder(Tokenizer.from_str(tok.to_str()), EncoderConfig.model_validate(settings))


def test_windows_overlap_by_stride_and_each_keeps_the_special_tokens(
    bundled: dict[str, Dataset],
) -> None:
    tok = _tokenizer(bundled)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    whole = Tokenizer.from_str(tok.to_str())
    whole.no_truncation()
    content = whole.encode(LONG).ids[1:-1]  # 14 tokens
    windows = _windows_encoder(tok).encode_windows([LONG, "refund"])
    assert windows.counts[1] == 1 and windows.counts[0] > 2
    mine = windows.ids[: windows.counts[0]]
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 8 for w in mine)
    inner = [w[1:-1] for w in mine]
    for before, after in itertools.pairwise(inner):
        assert after[:2] == before[-2:]  # stride 2: each window repeats the last 2 tokens
    assert inner[0] + [t for w in inner[1:] for t in w[2:]] == content  # nothing skipped
    assert windows.ids[-1] == whole.encode("refund").ids  # a short text is one window


def test_cut_reads_one_window_per_text_as_before(bundled: dict[str, Dataset]) -> None:
    enc = Encoder(_tokenizer(bundled), EncoderConfig(kind="word", max_length=8))
    windows = enc.encode_windows([LONG, "refund"])
    assert windows.single and windows.ids == enc.encode_ids([LONG, "refund"])
    logits = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    assert windows.per_text(logits) is logits  # nothing to pool: the very same logits


def test_max_windows_keeps_the_first_ones_and_the_last(bundled: dict[str, Dataset]) -> None:
    tok = _tokenizer(bundled)
    every = _windows_encoder(tok, max_windows=16).encode_windows([LONG])
    capped = _windows_encoder(tok, max_windows=2).encode_windows([LONG])
    assert len(every.ids) > 2 and capped.counts == [2]
    assert capped.ids == [every.ids[0], every.ids[-1]]


def test_explanations_read_the_first_window_and_say_the_text_was_cut(
    bundled: dict[str, Dataset],
) -> None:
    enc = _windows_encoder(_tokenizer(bundled), truncation="head+tail")  # the minilm preset's
    first = enc.encode_windows([LONG]).ids[0]
    offsets = enc.encode_with_offsets([LONG])[0]
    assert offsets.ids == first == enc.encode_ids([LONG])[0] and offsets.cut


def test_windows_pool_by_mean_or_max() -> None:
    logits = np.array([[1.0, -1.0], [3.0, 5.0], [0.0, 2.0], [7.0, 7.0]], dtype=np.float32)
    mean = Windows([[1]] * 4, [3, 1], "mean").per_text(logits)
    biggest = Windows([[1]] * 4, [3, 1], "max").per_text(logits)
    np.testing.assert_allclose(mean, [[4 / 3, 2.0], [7.0, 7.0]], rtol=1e-6)
    np.testing.assert_array_equal(biggest, [[3.0, 5.0], [7.0, 7.0]])
    pooled = Windows([[1]] * 4, [3, 1], "mean").pool_logits(torch.from_numpy(logits))
    np.testing.assert_allclose(pooled.numpy(), mean)


def test_a_stride_the_tokenizer_cannot_take_is_a_config_error(
    bundled: dict[str, Dataset],
) -> None:
    with pytest.raises(ConfigError, match=r"encoder\.stride=40 must be less than half"):
        load_config(
            "lstm", ["encoder.long_text=chunks", "encoder.max_length=64", "encoder.stride=40"]
        )
    # 4 special tokens leave 2 of 6 for the text: stride 2 would make the tokenizer panic
    tok = _tokenizer(bundled, template="[CLS] [CLS] $A [SEP] [SEP]")
    with pytest.raises(ConfigError, match=r"minus the tokenizer's 4 special tokens"):
        _windows_encoder(tok, max_length=6, stride=2)


@pytest.mark.parametrize("preset", ["linear", "nbsvm"])
def test_bag_families_refuse_windows_in_one_line(preset: str) -> None:
    with pytest.raises(ConfigError, match=r"raise encoder\.max_length") as err:
        check(load_config(preset, ["encoder.long_text=chunks"]))
    assert "\n" not in str(err.value) and "lstm.v1" in str(err.value)


def test_cli_refuses_windows_for_a_bag_family(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "t.csv"
    data.write_text("text,label\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(20)))
    line = user_error(capsys, ["train", str(data), "--set", "encoder.long_text=chunks"])
    assert "encoder.long_text=chunks applies to" in line


def test_run_folders_without_the_keys_read_texts_cut() -> None:
    raw = json.loads(load_config("lstm").model_dump_json())
    for key in ("long_text", "stride", "pool", "max_windows"):
        del raw["encoder"][key]
    cfg = parse_config(Path("config.json"), raw)
    assert cfg.encoder.long_text == "cut" and cfg.encoder == load_config("lstm").encoder


def test_training_data_has_a_row_per_window_and_a_target_per_text(
    bundled: dict[str, Dataset],
) -> None:
    enc = _windows_encoder(_tokenizer(bundled))
    train = bundled["train"]
    labels = LabelSet.fit(train)
    data = TrainData.from_dataset(train, labels, enc, n_out=len(labels))
    assert data.windows is not None and len(data) == len(data.windows.ids) > len(train)
    assert len(data.targets) == len(train)
    several = next(i for i, c in enumerate(data.windows.counts) if c > 1)
    rows = np.flatnonzero(data.windows.owners == several).tolist()
    _, _, targets = data.batch(rows, seed=(0, 0))
    assert targets.hard is not None
    assert targets.hard.tolist() == [labels.index(train.examples[several].labels[0])] * len(rows)


def test_dev_metric_scores_pooled_windows(bundled: dict[str, Dataset]) -> None:
    enc = _windows_encoder(_tokenizer(bundled))
    dev = bundled["dev"]
    labels = LabelSet.fit(bundled["train"])
    data = TrainData.from_dataset(dev, labels, enc, n_out=len(labels))
    torch.manual_seed(0)
    model = _BagOfIds(enc.vocab_size, len(labels))
    assert data.windows is not None
    scores = dev_metrics(model, data, loss_for(data.targets), DecisionRule(), torch.device("cpu"))
    per_window = batched_logits(model, data.ids, pad_id=enc.pad_id)
    pooled = data.windows.per_text(per_window.numpy())
    truth = data.targets.label_indices()
    assert scores["accuracy"] == pytest.approx(float((pooled.argmax(1) == truth).mean()))


class _BagOfIds(torch.nn.Module):
    """Order-free logits, so a window's position in a batch cannot matter."""

    def __init__(self, vocab: int, n_out: int) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(vocab, n_out)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        vectors = self.table.weight[ids] * mask.unsqueeze(-1)  # (B, T, C)
        return vectors.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


@pytest.fixture(scope="module")
def chunks_run(tmp_path_factory: pytest.TempPathFactory, bundled: dict[str, Dataset]) -> Path:
    """A tiny lstm trained on windows of 8 tokens (stride 2), exported to ONNX."""
    from fenlei.onnx import export_onnx

    preset, overrides = family_overrides("lstm.v1")
    run = tmp_path_factory.mktemp("chunks") / "run"
    train = bundled["train"]
    TextClassifier(preset, overrides=[*overrides, *CHUNKS, *QUICK], run_dir=run).fit(
        train.texts[:300], [labels[0] for labels in train.labels[:300]]
    )
    export_onnx(run)
    return run


TEXTS = [LONG, "refund", "where is my parcel? " * 6, "x"]


def test_a_chunks_run_records_the_reading_and_predicts_pooled_windows(chunks_run: Path) -> None:
    saved = json.loads((chunks_run / "config.json").read_text("utf-8"))["encoder"]
    assert (saved["long_text"], saved["stride"], saved["pool"]) == ("chunks", 2, "mean")
    predictor = Predictor.from_run(chunks_run, backend="torch")
    windows = predictor.encoder.encode_windows(TEXTS)
    assert windows.counts[0] > 1 and windows.counts[1] == 1
    per_window = batched_logits(predictor.model, windows.ids, pad_id=predictor.encoder.pad_id)
    expected = windows.per_text(per_window.numpy())
    np.testing.assert_allclose(predictor.logits(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(predictor.logits(TEXTS, batch_size=1), expected, atol=1e-5)
    history = [json.loads(line) for line in (chunks_run / "metrics.jsonl").read_text().splitlines()]
    assert history and "accuracy" in history[-1]["dev"]


def test_predict_onnx_and_serve_read_long_texts_alike(chunks_run: Path) -> None:
    from fenlei.serve.app import create_app
    from fenlei.serve.schemas import ServeSettings

    from .serve.conftest import LiveServer

    torch_ = Predictor.from_run(chunks_run, backend="torch")
    onnx = Predictor.from_run(chunks_run, backend="onnx")
    expected = torch_.predict_proba(TEXTS)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), expected, atol=1e-4)
    server = LiveServer(create_app({"m": chunks_run}, ServeSettings(max_wait_ms=1))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = client.post("/v1/models/m/predict", json={"texts": TEXTS, "top_k": 100})
        for row, pred in zip(expected, body.json()["predictions"], strict=True):
            probs = {t["label"]: t["probability"] for t in pred["top"]}
            served = np.array([probs[label] for label in torch_.labels])
            assert np.abs(served - row).max() < 1e-4
    finally:
        server.stop()
