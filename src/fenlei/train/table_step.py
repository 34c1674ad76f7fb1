"""The bag models' fused table step: a text's mean feature vector and the sparse Adagrad
update of the table rows a batch touched, each one compiled loop (numba), around the head
and loss that stay in PyTorch autograd.

Why a kernel: the linear model's step is ~20 small torch ops whose cost is dispatch, the
sparse gradient's COO tensors and torch's sparse Adagrad (coalesce, ``sparse_mask``), not
arithmetic: on SST-2 (batch 128, 45 features a text, 64 dimensions, one thread) 7.7 ms a
step, against 2.9 ms with these two loops (``bench`` row "linear train time ≤ 1 ×
fastText's", docs/benchmarks.md). The math is torch's: the same mean, the same gradient
and ``torch.optim.Adagrad``'s update (``lr / (1 + (step - 1) * lr_decay)``, ``eps``), on
that optimizer's own ``sum`` and ``step`` state, so checkpoints, resume and the learning-rate
schedule are unchanged; ``train.fused_table=false`` trains the same model with autograd
and torch's optimizer instead (the tests compare the two).

Enter through :func:`fused_table_step`, which returns None where the step does not apply
(no numba, a table feature it does not cover, another optimizer, mixed precision, several
ranks); the loop then takes the autograd path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fenlei.models.family import BagTable

if TYPE_CHECKING:
    from torch import nn

    from fenlei.config import TrainConfig
    from fenlei.models import Family

__all__ = ["FusedTableStep", "fused_table_step", "kernels_available", "load_kernels"]


def kernels_available() -> bool:
    """Whether numba imports (the fused step needs it)."""
    return _kernels() is not None


@functools.cache
def _kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """The two loops compiled, or None without numba.

    numba is imported here, when a run first needs the step, not with ``fenlei.train``: it
    imports scipy and holds ~65 MB, which a transformer's training should not carry.
    cache=True keeps the machine code beside this file (or in numba's user cache), so only
    the first training after an install compiles; nogil lets a server thread run;
    error_model="numpy" drops Python's zero-division check, which kept the row update's sqrt
    and division from vectorising (counts are never zero: at least 1).
    """
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back
        return None

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return njit(cache=True, nogil=True, error_model="numpy")(fn)  # type: ignore[no-any-return]
        except RuntimeError:  # no writable cache directory (read-only install, no home)
            return njit(nogil=True, error_model="numpy")(fn)  # type: ignore[no-any-return]

    return compiled(_bag_means), compiled(_adagrad_rows)


def _bag_means(
    features: np.ndarray, pad: int, weight: np.ndarray, out: np.ndarray, counts: np.ndarray
) -> None:  # pragma: no cover - compiled
    """out[b] = mean of weight[f] over the text's non-padding features f; counts[b] = their
    number (at least 1). ``out`` starts at zero."""
    texts, width = features.shape
    for b in range(texts):
        total = out[b]
        n = 0
        for j in range(width):
            f = features[b, j]
            if f != pad:
                n += 1
                row = weight[f]
                for d in range(row.shape[0]):
                    total[d] += row[d]
        count = max(n, 1)
        counts[b] = count
        for d in range(total.shape[0]):
            total[d] /= count


def _adagrad_rows(
    features: np.ndarray,
    pad: int,
    grad_means: np.ndarray,
    counts: np.ndarray,
    weight: np.ndarray,
    state_sum: np.ndarray,
    lr: float,
    eps: float,
    slot: np.ndarray,
    touched: np.ndarray,
    grads: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Adagrad on the rows the batch's features touched: each row's gradient is the sum of
    its texts' mean gradients divided by their feature counts (once per occurrence); then
    ``sum += g²; w -= lr * g / (sqrt(sum) + eps)`` in the table's precision, as torch's.
    Returns the number of rows updated.

    ``slot`` (one int per table row, all -1 on entry and on return) maps a row to its place
    in ``touched``/``grads``, which hold at least as many rows as the batch has features.
    Row views and scalars in the table's precision keep the inner loops contiguous, and with
    ``error_model="numpy"`` they vectorise: ~0.7 ms a SST-2 step, against 2.2 ms for element
    indexing with float64 scalars and Python's zero-division checks.
    """
    texts, width = features.shape
    real = weight.dtype.type
    step, tiny = real(lr), real(eps)
    n = 0
    for b in range(texts):
        share = real(1.0) / counts[b]
        grad_mean = grad_means[b]
        for j in range(width):
            f = features[b, j]
            if f == pad:
                continue
            s = slot[f]
            if s < 0:
                s = n
                slot[f] = n
                touched[n] = f
                grads[n, :] = 0.0
                n += 1
            into = grads[s]
            for d in range(into.shape[0]):
                into[d] += grad_mean[d] * share
    for i in range(n):
        row = touched[i]
        slot[row] = -1
        g, total, w = grads[i], state_sum[row], weight[row]
        for d in range(g.shape[0]):
            t = total[d] + g[d] * g[d]
            total[d] = t
            w[d] -= step * g[d] / (np.sqrt(t) + tiny)
    return n


def load_kernels() -> None:
    """Import numba and compile the kernels, or load them from numba's cache, now rather than
    in the first step: ~1 s a process here (numba's first use imports its NumPy and BLAS
    support), a few seconds more the first time after an install. The benchmark harness
    calls it before its clock starts, as it imports every system's libraries first."""
    kernels = _kernels()
    if kernels is None:
        return
    bag_means, adagrad_rows = kernels
    features = np.zeros((1, 1), dtype=np.int64)
    table = np.zeros((2, 1), dtype=np.float32)
    ones = np.ones(1, dtype=np.float32)
    bag_means(features, 1, table, np.zeros((1, 1), dtype=np.float32), ones.copy())
    slot = np.full(2, -1, dtype=np.int64)
    grads = np.zeros((1, 1), dtype=np.float32)
    touched = np.zeros(1, dtype=np.int64)
    adagrad_rows(
        features, 1, grads, ones, table, table.copy(), 0.1, 1e-10, slot, touched, grads.copy()
    )


class FusedTableStep:
    """The table half of one training step of a bag model (see the module docstring).

    ``logits`` runs the forward: the batch's features, their means (compiled), then the head
    from a leaf tensor, so ``loss.backward()`` reaches the head and that leaf only; after
    the optimizers' steps (torch's Adagrad skips the table: it has no gradient), ``update``
    applies the leaf's gradient to the touched rows.
    """

    def __init__(self, table: BagTable, optimizer: torch.optim.Optimizer) -> None:
        kernels = _kernels()
        if kernels is None:
            raise RuntimeError("the fused table step needs numba (pip install numba)")
        self._bag_means, self._adagrad_rows = kernels
        self.table = table
        self.optimizer = optimizer
        self.weight = table.weight.detach().numpy()  # shares memory with the parameter
        self.slot = np.full(self.weight.shape[0], -1, dtype=np.int64)
        self._pending: tuple[np.ndarray, np.ndarray, torch.Tensor] | None = None
        self._touched = np.empty(0, dtype=np.int64)
        self._grads = np.empty((0, self.weight.shape[1]), dtype=self.weight.dtype)

    def _scratch(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        # kept between steps: fresh megabytes a step cost page faults (~0.5 ms on SST-2)
        if len(self._touched) < rows:
            self._touched = np.empty(rows, dtype=np.int64)
            self._grads = np.empty((rows, self.weight.shape[1]), dtype=self.weight.dtype)
        return self._touched, self._grads

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits, remembering what ``update`` needs."""
        features = np.ascontiguousarray(self.table.features(ids, mask).numpy())
        means = np.zeros((features.shape[0], self.weight.shape[1]), dtype=self.weight.dtype)
        counts = np.empty(features.shape[0], dtype=self.weight.dtype)
        self._bag_means(features, self.table.pad, self.weight, means, counts)
        leaf = torch.from_numpy(means).requires_grad_()
        self._pending = (features, counts, leaf)
        return self.table.head(leaf)

    def update(self) -> None:
        """Adagrad on the rows the last ``logits`` call touched, from that call's gradient
        (the optimizer's group ``lr`` as the schedule left it, its ``sum`` and ``step``)."""
        if self._pending is None:
            return
        features, counts, leaf = self._pending
        self._pending = None
        if leaf.grad is None:  # the loss did not reach the table (e.g. a frozen path)
            return
        group = self.optimizer.param_groups[0]
        state = self.optimizer.state[self.table.weight]
        step = state["step"]
        step += 1
        lr = group["lr"] / (1 + (float(step) - 1) * group["lr_decay"])
        touched, grads = self._scratch(features.size)
        self._adagrad_rows(
            features,
            self.table.pad,
            np.ascontiguousarray(leaf.grad.numpy()),
            counts,
            self.weight,
            state["sum"].numpy(),
            lr,
            group["eps"],
            self.slot,
            touched,
            grads,
        )


def _plain_adagrad(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> bool:
    if not isinstance(optimizer, torch.optim.Adagrad) or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    state = optimizer.state.get(weight, {})
    return (
        group["weight_decay"] == 0
        and not group["maximize"]
        and "sum" in state
        and state["sum"].dtype == weight.dtype == torch.float32
    )


def fused_table_step(
    model: nn.Module,
    family: Family,
    cfg: TrainConfig,
    optimizers: list[torch.optim.Optimizer],
    *,
    device: torch.device,
    mixed_precision: bool,
    distributed: bool,
) -> FusedTableStep | None:
    """The fused step for this run, or None where the autograd path must train it:
    ``train.fused_table`` off, no numba, a family or model without a plain bag table
    (``Family.plain_bag``), an optimizer other than torch's Adagrad as the table's, mixed
    precision, a device other than the CPU, or a data-parallel job (DDP averages the
    parameters' gradients, which this step never creates)."""
    if not cfg.fused_table or family.plain_bag is None:
        return None
    if mixed_precision or distributed or device.type != "cpu":
        return None
    table = family.plain_bag(model)
    if table is None:
        return None
    owners = [o for o in optimizers if any(p is table.weight for p in o.param_groups[0]["params"])]
    if len(owners) != 1 or not _plain_adagrad(owners[0], table.weight):
        return None
    if not kernels_available():  # last: it imports numba, which only this step needs
        return None
    return FusedTableStep(table, owners[0])
