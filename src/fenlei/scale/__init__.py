"""Scale out on Ray (the optional extra ``fenlei[ray]``): train, predict and tune on a cluster.

- :mod:`~fenlei.scale.cluster`: :class:`RayOptions` and :func:`connect` (join a cluster at
  an address or start a local one; short connect timeout; dashboard off, loopback only).
- :mod:`~fenlei.scale.training`: :func:`train_on_ray`, Ray Train's ``TorchTrainer`` running
  :func:`fenlei.pipeline.train_run` in every worker under DDP; checkpoints through Ray's
  storage and restarts after a lost worker.
- :mod:`~fenlei.scale.batch`: :func:`predict_on_ray`, Ray Data ``map_batches`` over a pool
  of predictor actors into one Parquet/CSV file with an ``id`` column.
- :mod:`~fenlei.scale.trials`: :func:`trial_launcher`, the tuner's ``launcher`` running its
  trials as concurrent Ray tasks that share the Optuna study.

Ray is imported only inside these functions: importing this package needs no Ray.

Example:
    >>> options = RayOptions(workers=2)
    >>> train_on_ray(cfg, Tables(Path("train.csv")), "runs/x", options=options)  # doctest: +SKIP
"""

from __future__ import annotations

from fenlei.scale.batch import predict_on_ray
from fenlei.scale.cluster import RayOptions, connect, require_ray
from fenlei.scale.training import Tables, train_on_ray
from fenlei.scale.trials import trial_launcher

__all__ = [
    "RayOptions",
    "Tables",
    "connect",
    "predict_on_ray",
    "require_ray",
    "train_on_ray",
    "trial_launcher",
]
