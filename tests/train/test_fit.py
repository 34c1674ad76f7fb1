"""fit: targets given by the caller (soft ones too), the two hooks, the dev decision rule,
one record type for the loop and the solver, and no process-wide torch state."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fenlei.config import RunConfig, load_config
from fenlei.data import Dataset, LabelSet
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError
from fenlei.models import (
    Family,
    ModelSpec,
    batched_logits,
    build_model,
    check,
    family_of,
    to_probs,
)
from fenlei.records import EpochRecord, read_history
from fenlei.tokenize import Encoder, train_encoder
from fenlei.train import Loss, StopTraining, Targets, TrainData, fit, soft_targets
from fenlei.train.solve import solver_targets
from fenlei.train.state import dev_metrics

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
LINEAR = [
    "encoder.kind=word",
    "encoder.vocab_size=100",
    "model.buckets=500",
    "model.embedding_dim=8",
    "model.char_ngram_min=0",
    "train.lr=0.05",
    "train.sparse_lr=0.5",
    "train.patience=none",
]


def _toy(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of six random words; the rule: "good" among them makes a text "yes"."""
    rng = np.random.default_rng(seed)
    texts, hits = [], []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=6))
        hit = bool(rng.random() < 0.5)
        if hit:
            words[int(rng.integers(6))] = "good"
        texts.append(" ".join(words))
        hits.append(hit)
    return texts, np.array(hits)


def _labelled(texts: list[str], hits: np.ndarray) -> Dataset:
    return Dataset.from_lists(texts, ["yes" if h else "no" for h in hits])


class _Toy:
    """The toy task's encoder, labels and data, and a way to build a fresh model."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.texts, self.hits = _toy(300, 0)
        self.train = _labelled(self.texts, self.hits)
        self.labels = LabelSet.fit(self.train)  # ("no", "yes")
        self.encoder: Encoder = train_encoder(self.texts, cfg.encoder)
        self.ids = self.encoder.encode_ids(self.texts)
        dev = _labelled(*_toy(100, 1))
        self.dev = TrainData.from_dataset(dev, self.labels, self.encoder, n_out=2)
        self.data = TrainData.from_dataset(self.train, self.labels, self.encoder, n_out=2)

    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        spec = ModelSpec(
            vocab_size=self.encoder.vocab_size, pad_id=self.encoder.pad_id, n_outputs=2
        )
        vocab = self.encoder.tokenizer.get_vocab()
        return build_model(self.cfg.model, spec, vocab=vocab, train_ids=self.ids)

    @property
    def family(self) -> Family:
        return family_of(self.cfg.model.architecture)


@pytest.fixture(scope="module")
def toy() -> _Toy:
    return _Toy(load_config("linear", [*LINEAR, "train.epochs=8"]))


def test_fit_learns_a_rule_from_soft_targets_alone(toy: _Toy) -> None:
    teacher = np.where(toy.hits[:, None], [[0.2, 0.8]], [[0.8, 0.2]])  # a teacher sure to 0.8
    data = TrainData(toy.ids, soft_targets(teacher, width=2), toy.encoder.pad_id)
    run = fit(toy.model(), family_of("linear.v2"), data, toy.dev, toy.cfg.train)
    texts, hits = _toy(100, 2)
    logits = batched_logits(run.model, toy.encoder.encode_ids(texts), pad_id=toy.encoder.pad_id)
    p_yes = to_probs(logits, multi_label=False).numpy()[:, 1]
    assert ((p_yes > 0.5) == hits).mean() >= 0.9  # it predicts the rule
    # ...at the teacher's confidence, not a hard label's (1.0 / 0.0)
    assert 0.6 < p_yes[hits].mean() < 0.9
    assert 0.1 < p_yes[~hits].mean() < 0.4


def test_nbsvm_learns_a_rule_from_soft_targets(toy: _Toy) -> None:
    # the solver fits each text's probability as a weighted positive and negative example
    cfg = load_config("nbsvm", ["encoder.kind=word", "model.buckets=500", "model.nb_c=[1.0]"])
    spec = ModelSpec(vocab_size=toy.encoder.vocab_size, pad_id=toy.encoder.pad_id, n_outputs=2)
    model = build_model(cfg.model, spec, train_ids=toy.ids)
    teacher = np.where(toy.hits[:, None], [[0.2, 0.8]], [[0.8, 0.2]])  # a teacher sure to 0.8
    data = TrainData(toy.ids, soft_targets(teacher, width=2), toy.encoder.pad_id)
    run = fit(model, family_of("nbsvm.v1"), data, toy.dev, cfg.train)
    texts, hits = _toy(100, 2)
    logits = batched_logits(run.model, toy.encoder.encode_ids(texts), pad_id=toy.encoder.pad_id)
    p_yes = to_probs(logits, multi_label=False).numpy()[:, 1]
    assert ((p_yes > 0.5) == hits).mean() >= 0.9
    assert 0.6 < p_yes[hits].mean() < 0.9  # the teacher's confidence, not a hard label's
    assert 0.1 < p_yes[~hits].mean() < 0.4


def test_a_family_without_soft_targets_refuses_them(toy: _Toy) -> None:
    cfg = load_config("nbsvm", ["encoder.kind=word", "model.buckets=500"])
    spec = ModelSpec(vocab_size=toy.encoder.vocab_size, pad_id=toy.encoder.pad_id, n_outputs=2)
    model = build_model(cfg.model, spec, train_ids=toy.ids)
    targets = toy.data.targets.with_soft(np.full((len(toy.ids), 2), 0.5))
    data = TrainData(toy.ids, targets, toy.encoder.pad_id)
    hard_only = dataclasses.replace(family_of("nbsvm.v1"), soft_targets=False)
    with pytest.raises(ConfigError, match="hard labels only"):
        fit(model, hard_only, data, toy.dev, cfg.train)


def test_solver_targets_fold_the_soft_and_hard_mix_into_probabilities() -> None:
    hard = torch.tensor([1, 0, 1])
    soft = torch.tensor([[0.4, 0.6], [0.3, 0.7], [0.9, 0.1]])
    known = torch.tensor([True, True, False])  # the third row is an augmented copy
    for width in (1, 2):
        t = Targets(width=width, hard=hard, soft=soft, known=known)
        [(column, share)] = solver_targets(t, alpha=0.25)
        assert column == width - 1
        np.testing.assert_allclose(share, [0.25 * 0.6 + 0.75, 0.25 * 0.7, 0.1])
    [(_, plain)] = solver_targets(Targets(width=2, hard=hard))
    assert plain.dtype == np.bool_ and plain.tolist() == [True, False, True]
    three = Targets(width=3, soft=torch.tensor([[0.2, 0.5, 0.3]]))
    assert [(k, v.tolist()) for k, v in solver_targets(three)] == [
        (0, [pytest.approx(0.2)]),
        (1, [pytest.approx(0.5)]),
        (2, [pytest.approx(0.3)]),
    ]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fenlei-checkpoint"]


def test_a_hook_stops_training_cleanly(toy: _Toy, tmp_path: Path) -> None:
    seen: list[EpochRecord] = []

    def prune(record: EpochRecord) -> None:
        seen.append(record)
        if record.epoch == 2:
            raise StopTraining("pruned")

    run = fit(
        toy.model(), toy.family, toy.data, toy.dev, toy.cfg.train, run_dir=tmp_path, on_epoch=prune
    )
    assert [r.epoch for r in run.history] == [1, 2] == [r.epoch for r in seen]
    assert run.stopped_by == "hook" and run.stopped_early
    assert not _writer_threads()  # the checkpoint writer was closed
    assert read_history(tmp_path / "metrics.jsonl") == run.history
    progress = json.loads((tmp_path / "checkpoint" / "progress.json").read_text())
    assert progress["epoch"] < 2  # the epoch that ended training is never half-written
    assert not list((tmp_path / "checkpoint").glob("*.tmp*"))
    assert run.best_record is not None and run.best_record.is_best


def test_the_error_hook_sees_a_failure_before_it_propagates(toy: _Toy, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def explode(record: EpochRecord) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fit(
            toy.model(),
            toy.family,
            toy.data,
            toy.dev,
            toy.cfg.train,
            run_dir=tmp_path,
            on_epoch=explode,
            on_error=errors.append,
        )
    assert [str(e) for e in errors] == ["disk on fire"]
    assert not _writer_threads()


class _Fixed(torch.nn.Module):
    """Logits that give probabilities 0.7 and 0.3 to the two labels of every text."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = torch.tensor([0.7, 0.3]).expand(len(ids), 2)
        return torch.log(p / (1 - p))


def test_the_dev_metric_decides_with_the_configured_threshold() -> None:
    truth = torch.tensor([[1.0, 0.0]] * 4)
    dev = TrainData([[5, 6]] * 4, Targets(width=2, multi_label=True, hard=truth), pad_id=0)
    cpu = torch.device("cpu")
    at_half = dev_metrics(_Fixed(), dev, Loss(), DecisionRule(True, 0.5), cpu)
    at_high = dev_metrics(_Fixed(), dev, Loss(), DecisionRule(True, 0.8), cpu)
    assert at_half["accuracy"] == 1.0  # label 0 chosen at 0.7 >= 0.5, label 1 not
    assert at_high["accuracy"] == 0.0  # 0.7 < 0.8: no label chosen


def test_the_solver_and_the_loop_write_the_same_record(toy: _Toy, tmp_path: Path) -> None:
    cfg = load_config("nbsvm", ["encoder.kind=word", "model.buckets=500", "model.nb_c=[0.1,1.0]"])
    spec = ModelSpec(vocab_size=toy.encoder.vocab_size, pad_id=toy.encoder.pad_id, n_outputs=2)
    solved = fit(
        build_model(cfg.model, spec, train_ids=toy.ids),
        family_of("nbsvm.v1"),
        toy.data,
        toy.dev,
        cfg.train,
        run_dir=tmp_path / "solved",
    )
    looped = fit(
        toy.model(), toy.family, toy.data, toy.dev, toy.cfg.train.model_copy(update={"epochs": 1})
    )
    assert {type(r) for r in [*solved.history, *looped.history]} == {EpochRecord}
    assert [r.param for r in solved.history] == [{"c": 0.1}, {"c": 1.0}]
    assert all(r.lr is None for r in solved.history)
    assert looped.history[0].param is None and looped.history[0].lr is not None
    assert read_history(tmp_path / "solved" / "metrics.jsonl") == solved.history


def test_fit_leaves_process_wide_torch_settings_alone(toy: _Toy) -> None:
    before = torch.get_num_threads()
    cfg = toy.cfg.train.model_copy(update={"epochs": 1, "threads": before + 1})
    fit(toy.model(), toy.family, toy.data, toy.dev, cfg)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_training_on_cuda_without_a_gpu_is_a_config_error(toy: _Toy) -> None:
    cfg = toy.cfg.train.model_copy(update={"device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        fit(toy.model(), toy.family, toy.data, toy.dev, cfg)


class _Steps:
    """A progress reporter that keeps each epoch's number of steps."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.steps.append(steps)

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, record: EpochRecord) -> None:
        pass


def test_small_data_trains_in_smaller_batches(toy: _Toy) -> None:
    # the linear preset's train.min_steps_per_epoch=32: 300 texts in batches of 32, not 128
    # (docs/benchmarks.md, "Defaults on small many-class data")
    assert toy.cfg.train.batch_size == 128
    for update, steps in (({}, 10), ({"min_steps_per_epoch": None}, 3)):
        seen = _Steps()
        cfg = toy.cfg.train.model_copy(update={"epochs": 1, **update})
        fit(toy.model(), toy.family, toy.data, toy.dev, cfg, progress=seen)
        assert seen.steps == [steps]


def test_the_head_learns_at_its_own_rate(toy: _Toy) -> None:
    model = toy.model()
    head = model.head.weight.detach().clone()
    table = model.embed.weight.detach().clone()
    cfg = toy.cfg.train.model_copy(update={"epochs": 1, "head_lr": 1e-12, "clip_grad_norm": None})
    run = fit(model, toy.family, toy.data, toy.dev, cfg)
    assert torch.allclose(run.model.head.weight, head, atol=1e-9)  # frozen in effect
    assert not torch.allclose(run.model.embed.weight, table)  # the rest trained


def test_the_token_embeddings_learn_at_their_own_rate() -> None:
    toy = _Toy(
        load_config(
            "lstm",
            [
                "encoder.kind=word",
                "encoder.vocab_size=100",
                "model.embedding_dim=8",
                "model.hidden_size=8",
                "train.patience=none",
            ],
        )
    )
    model = toy.model()
    table = toy.family.token_embedding(model).weight.detach().clone()  # type: ignore[misc]
    head = model.head.weight.detach().clone()
    update = {"epochs": 1, "embedding_lr": 1e-12, "clip_grad_norm": None}
    run = fit(model, toy.family, toy.data, toy.dev, toy.cfg.train.model_copy(update=update))
    after = toy.family.token_embedding(run.model).weight  # type: ignore[misc]
    assert torch.allclose(after, table, atol=1e-9)  # frozen in effect
    assert not torch.allclose(run.model.head.weight, head)  # the rest trained


def test_embedding_lr_is_refused_where_no_dense_table_takes_it() -> None:
    with pytest.raises(ConfigError, match=r"train\.sparse_lr"):
        check(load_config("linear", ["train.embedding_lr=0.01"]))
    with pytest.raises(ConfigError, match=r"train\.embedding_lr"):
        check(load_config("nbsvm", ["train.embedding_lr=0.01"]))
