"""Pydantic models of the HTTP service: settings, requests, responses and errors.

Everything here is frozen and strict. :class:`ServeSettings` holds every server knob
(batching, limits, token, drift window); the request and response models are what the
OpenAPI schema at ``/docs`` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from fenlei.data import check_text
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError

if TYPE_CHECKING:
    from fenlei.predict import Prediction

__all__ = [
    "DecisionInfo",
    "DriftReport",
    "DriftStatistic",
    "ErrorBody",
    "ErrorResponse",
    "ExplainRequest",
    "ExplainResponse",
    "HealthResponse",
    "LabelScore",
    "ModelDetail",
    "ModelInfo",
    "ModelList",
    "PredictRequest",
    "PredictResponse",
    "ServeLimits",
    "ServeSettings",
    "TextExplanation",
    "TextPrediction",
    "WordScore",
    "check_texts",
    "describe_model",
    "serve_settings",
]

# Bytes of JSON one character can take: 6 for a \uXXXX escape (json.dumps' default for
# non-ASCII text), which also covers raw UTF-8 (at most 4).
_JSON_BYTES_PER_CHAR = 6
_JSON_SLACK = 65_536  # the envelope, quotes and commas, top_k, whitespace


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServeSettings(_Frozen):
    """Every setting of the server (CLI flags map one to one)."""

    max_batch_size: int = Field(64, ge=1, description="Most texts one model call takes.")
    max_wait_ms: float = Field(
        2.0, ge=0, description="Longest a text waits for others to join its batch (ms)."
    )
    max_texts: int = Field(256, ge=1, description="Most texts in one request (else 413).")
    max_chars: int = Field(10_000, ge=1, description="Most characters per text (else 413).")
    max_explain_texts: int = Field(
        8, ge=1, description="Most texts in one explain request (else 413)."
    )
    max_batch_chars: int = Field(
        8_192,
        ge=1,
        description="Most characters per model call (a stand-in for tokens); a request that "
        "does not fit is split across calls, and one longer text runs alone (below "
        "max_chars by default, so a maximum-size text never delays others in its call).",
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1,
        description="Most bytes of request body (else 413, without reading the rest); None: "
        "max_texts * max_chars * 6 + 64 KiB, so any request within those limits fits "
        "even with every character JSON-escaped.",
    )
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        description="Most bytes of request line and headers together (else 431; or 400 from "
        "the HTTP server, which stops reading a head that grows past it).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a client has, once its headers are in, to send the whole body "
        "(else 408).",
    )
    token: str | None = Field(
        None,
        description="Bearer token required on /v1/* and /v2/models/* (printable ASCII, no "
        "spaces); None leaves them open.",
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="Inference backend: ONNX Runtime when model.onnx exists (auto)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the models run: a CUDA GPU when there is one (auto; the PyTorch "
        "model), else the CPU.",
    )
    threads: int | None = Field(
        1,
        ge=1,
        description="Intra-op threads of PyTorch / ONNX Runtime; 1 leaves the other cores to "
        "the event loop (best for small models); None keeps the libraries' default.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Batches of one model that may run at once (threads); None: one per "
        "free core for transformers (cores / threads, at most 4), one for other models.",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="Texts per model call inside a batch, grouped by length so padding stays "
        "small; None: 8 for transformers, the run's eval.batch_size otherwise.",
    )
    drift_window: int = Field(1000, ge=10, description="Recent texts kept per model for PSI.")
    drift_min_samples: int = Field(
        100, ge=1, description="Texts needed in the window before drift is judged."
    )
    graceful_timeout_s: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish after SIGTERM."
    )

    @field_validator("token")
    @classmethod
    def _token_fits_a_header(cls, token: str | None) -> str | None:
        # Clients send the token in an HTTP header, which carries visible ASCII: a token
        # outside it could never match. (Never echo the token: it is a secret.)
        if token is None:
            return None
        if not token:
            raise ValueError("empty; leave the token unset to serve /v1 without one")
        for i, char in enumerate(token):
            if not "!" <= char <= "~":
                kind = "a space" if char.isspace() else f"character U+{ord(char):04X}"
                raise ValueError(
                    f"{kind} at position {i}; a bearer token must be printable ASCII "
                    "without spaces (what an HTTP header carries): choose another"
                )
        return token

    @property
    def body_limit(self) -> int:
        """``max_body_bytes``, or the size the largest allowed request can take as JSON."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_texts * self.max_chars * _JSON_BYTES_PER_CHAR + _JSON_SLACK


def serve_settings(**values: Any) -> ServeSettings:
    """Build :class:`ServeSettings`, turning a bad value into one :class:`ConfigError` line.

    Raises:
        ConfigError: a value is out of range or unusable (names the setting, never the token).

    Example:
        >>> serve_settings(max_texts=64).body_limit
        3905536
    """
    try:
        return ServeSettings(**values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        # not chained: pydantic's error would carry the token's value into tracebacks
        raise ConfigError("invalid serve settings: " + "; ".join(problems)) from None


def check_texts(texts: list[str]) -> list[str]:
    """``texts`` unchanged, or a ValueError naming the first unusable one (``texts[i]``).

    A text must be valid Unicode (JSON may escape a lone surrogate, ``\\ud800``, which no
    tokenizer takes) and not empty or only whitespace (the model would guess from nothing;
    the CLI refuses it too): the client's mistake, a 422, not the model's failure.

    Example:
        >>> check_texts(["fine", " "])
        Traceback (most recent call last):
        ValueError: texts[1] is empty (or only whitespace); send a text to classify
    """
    for i, text in enumerate(texts):
        problem = check_text(text)
        if problem is not None:
            raise ValueError(
                f"texts[{i}] {problem}; send valid Unicode (a whole surrogate pair, "
                "such as \\ud83d\\ude00, for one emoji)"
            )
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty (or only whitespace); send a text to classify")
    return texts


class PredictRequest(_Frozen):
    """Texts to classify and how many labels to return per text."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["where is my parcel?"], "top_k": 2}]},
    )

    texts: list[StrictStr] = Field(
        ..., min_length=1, description="Texts to classify (at least one)."
    )
    top_k: StrictInt = Field(1, ge=1, le=1000, description="Labels returned per text.")

    @field_validator("texts")
    @classmethod
    def _texts_are_usable(cls, texts: list[str]) -> list[str]:
        return check_texts(texts)


class LabelScore(_Frozen):
    """One label and its probability."""

    label: str
    probability: float


class TextPrediction(_Frozen):
    """The result for one text: best label, its probability, the chosen labels and the
    top-k labels (the same decision as ``Predictor.predict``).

    One shape for every caller: each prediction of ``POST /v1/models/{name}/predict`` and
    each line of ``fenlei predict --json`` (which adds the ``text``).
    """

    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    labels: list[str] = Field(
        description="The labels the model's decision rule chose: the best label, or for a "
        "multi-label model every label whose probability reaches the threshold (maybe none)."
    )
    abstained: bool = Field(
        False,
        description="The model abstains: its top probability is below the run's reject point "
        "(eval.abstain_target_accuracy), so labels is empty; label is still the most "
        "probable one.",
    )
    top: list[LabelScore]

    @classmethod
    def from_prediction(cls, prediction: Prediction, top_k: int) -> TextPrediction:
        """The shape of a :class:`~fenlei.predict.Prediction` with its ``top_k`` labels.

        Example:
            >>> TextPrediction.from_prediction(predictor.predict(["hi"])[0], 2)  # doctest: +SKIP
        """
        return cls(
            label=prediction.label,
            score=prediction.score,
            labels=list(prediction.labels),
            abstained=prediction.abstained,
            top=[LabelScore(label=k, probability=p) for k, p in prediction.top(top_k)],
        )


class PredictResponse(_Frozen):
    """Predictions in the order of the request's texts."""

    model: str
    predictions: list[TextPrediction]


class ModelInfo(_Frozen):
    """What a loaded model is: name, labels, version, backend and training metrics."""

    name: str
    labels: list[str]
    multi_label: bool = Field(description="Whether a text may get several labels (or none).")
    version: str = Field(description="fenlei version + first 12 hex of the weights' sha256.")
    preset: str
    architecture: str
    backend: str
    kind: str = Field(description="What the run folder holds: single (one model) or ensemble.")
    metrics: dict[str, float | int | None] = Field(
        description="Headline dev/test metrics from training (accuracy, macro F1, ...)."
    )
    members: dict[str, float] = Field(
        default_factory=dict,
        description="An ensemble's members and their weights (empty for one model).",
    )


class DecisionInfo(_Frozen):
    """How a model's probabilities become labels (the run's decision rule)."""

    multi_label: bool
    thresholds: list[float] | None = Field(
        description="Multi-label: the threshold of each label, in label order (None: "
        "single-label, the most probable label wins)."
    )
    abstain_below: float | None = Field(
        description="Single-label: no label when the top probability is below it (None: "
        "never abstains)."
    )


class ServeLimits(_Frozen):
    """The server's limits on one request (beyond them: 413)."""

    max_texts: int
    max_chars: int
    max_explain_texts: int
    max_body_bytes: int
    max_batch_size: int = Field(description="Most texts one model call takes.")


class ModelDetail(ModelInfo):
    """One model in full (``GET /v1/models/{name}``): what the list says, plus the device,
    the calibration temperature, the decision rule and the request limits."""

    device: str = Field(description="Where the model runs (cpu, cuda).")
    temperature: float | None = Field(
        description="Logits are divided by it before the softmax/sigmoid (1.0: not "
        "calibrated; None: the predictor has no calibration of its own, e.g. an ensemble)."
    )
    decision: DecisionInfo
    limits: ServeLimits


def describe_model(
    info: ModelInfo,
    *,
    device: str,
    rule: DecisionRule,
    temperature: float | None,
    settings: ServeSettings,
) -> ModelDetail:
    """The full description of a served model (``GET /v1/models/{name}``).

    Example:
        >>> describe_model(info, device="cpu", rule=DecisionRule(), temperature=1.0,
        ...                settings=ServeSettings()).decision.thresholds is None  # doctest: +SKIP
        True
    """
    n_labels = len(info.labels)
    decision = DecisionInfo(
        multi_label=rule.multi_label,
        thresholds=rule.thresholds(n_labels).tolist() if rule.multi_label else None,
        abstain_below=rule.abstain_below,
    )
    limits = ServeLimits(
        max_texts=settings.max_texts,
        max_chars=settings.max_chars,
        max_explain_texts=settings.max_explain_texts,
        max_body_bytes=settings.body_limit,
        max_batch_size=settings.max_batch_size,
    )
    return ModelDetail(
        **info.model_dump(),
        device=device,
        temperature=temperature,
        decision=decision,
        limits=limits,
    )


class ModelList(_Frozen):
    """Every model the server holds."""

    models: list[ModelInfo]


class HealthResponse(_Frozen):
    """Liveness or readiness."""

    status: str
    models: list[str] = Field(default_factory=list)


class DriftStatistic(_Frozen):
    """PSI of one statistic over the rolling window."""

    psi: float | None
    status: Literal["stable", "warn", "drifted", "insufficient_data"]
    noise: float | None = Field(
        None,
        description="PSI that sampling alone gives on unchanged traffic, about "
        "(bins - 1) * (1/reference texts + 1/window texts): a PSI near it is no evidence "
        "of drift.",
    )


class DriftReport(_Frozen):
    """Population stability index per statistic, recent traffic against training (dev)."""

    model: str
    window: int = Field(description="Texts currently in the rolling window.")
    window_size: int = Field(description="Capacity of the rolling window.")
    min_samples: int
    thresholds: dict[str, float]
    drifted: bool = Field(description="True when any statistic's PSI exceeds the drift level.")
    statistics: dict[str, DriftStatistic]


class ErrorBody(_Frozen):
    """What went wrong, machine-readable (``code``, ``limit``) and in words."""

    code: str
    message: str
    limit: str | None = None
    max: int | float | None = None
    got: int | float | None = None
    details: list[dict[str, object]] | None = None


class ErrorResponse(_Frozen):
    """Every 4xx/5xx body: ``{"error": {...}}``."""

    error: ErrorBody


class ExplainRequest(_Frozen):
    """Texts to explain, towards their predicted label or one ``target`` label."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["where is my parcel?"], "target": None}]},
    )

    texts: list[StrictStr] = Field(..., min_length=1, description="Texts to explain.")
    target: StrictStr | None = Field(
        None, description="Explain this label for every text (None: each text's prediction)."
    )

    @field_validator("texts")
    @classmethod
    def _texts_are_unicode(cls, texts: list[str]) -> list[str]:
        # an empty text is the explainer's to refuse (422 unexplainable_text)
        for i, text in enumerate(texts):
            problem = check_text(text)
            if problem is not None:
                raise ValueError(f"texts[{i}] {problem}; send valid Unicode")
        return texts


class WordScore(_Frozen):
    """One word of a text and its score towards the explained label."""

    token: str = Field(description="The word as written: text[start:end].")
    start: int = Field(description="Start offset in the text (Unicode code points).")
    end: int = Field(description="End offset (exclusive).")
    score: float = Field(description="Its share of the label's score; > 0 pushes towards it.")


class TextExplanation(_Frozen):
    """Why one text gets (or would get) a label: a score per word."""

    label: str = Field(description="The label explained (the prediction, or the target).")
    predicted: str = Field(description="The most probable label.")
    probability: float = Field(description="The explained label's probability.")
    method: Literal["exact", "integrated-gradients", "ensemble"]
    score: float = Field(
        description="The label's score: its logit minus the mean logit (softmax), its "
        "log-odds (one sigmoid) or its logit (multi-label)."
    )
    base: float = Field(description="The score without the words (bias or baseline).")
    special: float = Field(description="The part of special tokens ([CLS], [SEP]).")
    delta: float = Field(
        description="Integrated gradients' convergence delta: sum of word scores + special "
        "= score - base + delta (0 when exact)."
    )
    truncated: bool = Field(description="The text was cut like the model cuts it.")
    unknown: int = Field(description="Words the model knows only as the unknown token.")
    tokens: list[WordScore]


class ExplainResponse(_Frozen):
    """Explanations in the order of the request's texts."""

    model: str
    explanations: list[TextExplanation]
