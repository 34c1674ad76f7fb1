"""scikit-learn peer: TF-IDF (word 1-2-grams; character 1-3-grams for Chinese) + a linear model.

Options: ``model`` = ``logreg`` (LogisticRegression) or ``svm`` (LinearSVC).
Run: ``bench/.venvs/sklearn/bin/python bench/peers/sklearn_peer.py task.json``.
"""

from __future__ import annotations

import pickle
import time
from importlib.metadata import version

import _common as c
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC


def main() -> None:
    task = c.load_task()
    opts = task.get("options", {})
    tr_x, tr_y = c.read_table(task["train"])
    te_x, _ = c.read_table(task["test"])
    if task["lang"] == "zh":
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    else:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    clf = (
        LinearSVC(C=1.0)
        if opts.get("model") == "svm"
        else LogisticRegression(C=10.0, max_iter=2000)
    )
    pipe = make_pipeline(vec, clf)
    t0 = time.perf_counter()
    pipe.fit(tr_x, tr_y)
    train_seconds = time.perf_counter() - t0

    def predict(texts: list[str]) -> list[str]:
        return [str(x) for x in pipe.predict(texts)]

    predictions = predict(te_x)
    timing = c.time_inference(predict, te_x)
    c.emit(
        {
            "predictions": predictions,
            "train_seconds": train_seconds,
            "model_bytes": len(pickle.dumps(pipe)),
            "settings": {"vectorizer": repr(vec), "classifier": repr(clf)},
            "versions": {"scikit-learn": version("scikit-learn")},
            **timing,
        }
    )


if __name__ == "__main__":
    main()
