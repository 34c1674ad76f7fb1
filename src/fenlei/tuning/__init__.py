"""Hyperparameter search on Optuna: ``fenlei tune`` and :func:`tune`.

Enter through :func:`tune` (the CLI's ``fenlei tune`` calls it). The modules:

- :mod:`~fenlei.tuning.space`: what a study searches, read from each family's own
  ``search_space`` and validated up front;
- :mod:`~fenlei.tuning.study`: the study in its storage, its identity, trial records, the
  winner and the Pareto front;
- :mod:`~fenlei.tuning.trials`: :class:`TuneJob` and :func:`run_trials`, what any process
  that runs trials of a shared study calls (the seam for a cluster launcher);
- :mod:`~fenlei.tuning.tuner`: :func:`tune`, the whole job; :mod:`~fenlei.tuning.plot`: the
  Pareto plot.

Optuna is an optional extra (``pip install 'fenlei[tune]'``), imported when a study starts.
The package is named ``tuning`` so that ``fenlei.tune`` stays the function: a submodule of
that name would replace it as an attribute of the package once imported.

Example:
    >>> from fenlei import tune
    >>> result = tune("train.csv", preset="linear", trials=20, out="runs/best")  # doctest: +SKIP
    >>> result.best.value, result.config_path  # doctest: +SKIP
    (0.912, PosixPath('runs/best.toml'))
"""

from __future__ import annotations

from fenlei.tuning.study import TrialSummary
from fenlei.tuning.trials import TuneJob, batch1_latency_ms, run_trials
from fenlei.tuning.tuner import Launcher, TuneResult, tune

__all__ = [
    "Launcher",
    "TrialSummary",
    "TuneJob",
    "TuneResult",
    "batch1_latency_ms",
    "run_trials",
    "tune",
]
