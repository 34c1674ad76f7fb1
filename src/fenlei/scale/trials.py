"""Tuning trials on Ray: a launcher for :func:`fenlei.tuning.tune` that runs its trials in
``workers`` Ray tasks at once, all sharing the study's Optuna storage.

:func:`trial_launcher` returns a function with the tuner's ``launcher`` signature. Each
task calls the tuner's own trial runner (:func:`fenlei.tuning.trials.run_trials`, passed in
by the caller: this package sits beside :mod:`fenlei.tuning` and does not import it) with
its own worker number (so the samplers differ) and the study's total, so the tasks stop
together when the study holds that many trials. Everything else stays the tuner's:
resuming a study, retrying interrupted trials, the latency budget and choosing the winner
happen on the driver, before and after the launcher.

Example:
    >>> from fenlei.tuning.trials import run_trials  # doctest: +SKIP
    >>> launcher = trial_launcher(options, run_trials)  # doctest: +SKIP
    >>> tune("train.csv", out="runs/best", launcher=launcher)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fenlei.scale.cluster import RayOptions, connect, user_error

__all__ = ["shares", "trial_launcher"]


def shares(n_trials: int | None, workers: int) -> list[int | None]:
    """How many trials each task runs at most (None: until the study's total or the time)."""
    if n_trials is None:
        return [None] * workers
    base, extra = divmod(n_trials, workers)
    counts = [base + (1 if i < extra else 0) for i in range(workers)]
    return [c for c in counts if c > 0]


def _run_share(
    run: Callable[..., None], job: Any, share: int | None, worker: int, **kw: Any
) -> None:
    from fenlei.runtime import configure_torch, limit_tokenizer_threads

    threads = kw.pop("threads")
    configure_torch(threads=threads)
    limit_tokenizer_threads(threads)
    run(job, n_trials=share, worker=worker, **kw)


def trial_launcher(options: RayOptions, run: Callable[..., None]) -> Callable[..., None]:
    """A ``launcher`` for :func:`fenlei.tuning.tune` that runs trials on Ray.

    Args:
        options: the cluster and the number of concurrent trials (``workers``); each task
            reserves ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs.
        run: the tuner's trial runner (:func:`fenlei.tuning.trials.run_trials`).

    The study's storage must be reachable from every node: SQLite on a shared folder
    serves a few concurrent trials on one machine; use a PostgreSQL or MySQL URL
    (``--storage``) on a cluster.
    """

    def launch(
        job: Any,
        *,
        n_trials: int | None,
        total: int | None = None,
        timeout: float | None = None,
        pruner: Any = None,
        callbacks: Sequence[Any] = (),  # per-trial lines: not shown, trials run remotely
    ) -> None:
        with connect(options) as ray:
            resources: dict[str, Any] = {"num_cpus": options.cpus_per_worker}
            if options.gpus_per_worker > 0:
                resources["num_gpus"] = options.gpus_per_worker
            task = ray.remote(max_retries=0, **resources)(_run_share)
            threads = max(1, int(options.cpus_per_worker))
            refs = [
                task.remote(
                    run,
                    job,
                    share,
                    worker,
                    total=total,
                    timeout=timeout,
                    pruner=pruner,
                    threads=threads,
                )
                for worker, share in enumerate(shares(n_trials, options.workers))
            ]
            try:
                ray.get(refs)
            except Exception as exc:
                if (mistake := user_error(exc)) is not None:
                    raise mistake from None
                raise

    return launch
