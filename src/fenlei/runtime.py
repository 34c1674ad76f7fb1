"""Where and how computation runs: the device, process-wide torch settings, and the rank.

- :func:`resolve_device` is the one device resolver (training and inference).
- :func:`configure_torch` sets process-wide torch state (threads, flush-denormal, seed). Only
  entry points call it (the CLI, :class:`~fenlei.classifier.TextClassifier`, the server), so
  library functions leave global state alone and several trials can share one process.
- :class:`Dist` says which rank this process is in a data-parallel job (torchrun or Ray
  Train set ``RANK``/``WORLD_SIZE``); the training loop and the pipeline guard writes with
  :attr:`Dist.is_main`.

Example:
    >>> resolve_device("cpu").type
    'cpu'
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from fenlei.errors import ConfigError

__all__ = [
    "DEVICES",
    "MMAP_THRESHOLD_LOW_MEMORY",
    "MMAP_THRESHOLD_TRAINING",
    "Dist",
    "Threads",
    "configure_torch",
    "limit_tokenizer_threads",
    "mmap_large_blocks",
    "resolve_device",
    "training_threads",
    "usable_cores",
]

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (a CUDA GPU when torch sees one, else the CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ConfigError: an unknown name, or ``"cuda"`` without a GPU that torch can use.
    """
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA GPU here; use device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# glibc's mallopt() parameter for the mmap threshold (malloc.h: M_MMAP_THRESHOLD)
_M_MMAP_THRESHOLD = -3
# bytes; glibc starts at 128 KiB and raises the threshold as blocks are freed. Fixed at 16 MiB
# for a transformer's training (its attention and activation blocks of many batch shapes):
# MiniLM on 2,000 sms_spam texts peaked at 2,216 MiB instead of 2,360 and on 500 IMDB reviews
# at 2,161 instead of 2,312-2,353, for no measured time; 4 MiB gave 2,047 and 1,886 MiB for
# 1.07x and 1.2x the time; 128 KiB (train.low_memory) 1,801 MiB for 1.35-1.75x. (All against
# the benchmark's MALLOC_MMAP_THRESHOLD_=4 GiB, which HF Trainer ran under too.)
MMAP_THRESHOLD_TRAINING = 16 * 1024 * 1024
MMAP_THRESHOLD_LOW_MEMORY = 128 * 1024


def mmap_large_blocks(threshold: int = MMAP_THRESHOLD_TRAINING) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more with its own mmap,
    returned to the system when freed; False where that cannot be set (not glibc).

    Training allocates activations of many sizes (length-bucketed batches). glibc starts
    at 128 KiB but raises its threshold, up to 32 MiB, each time such a block is freed, so
    activations soon come from the heap, where freed blocks of one size are kept and are
    not reused for another. Fixing it returns large freed blocks to the system; each costs an
    mmap and its page faults when it is allocated again, so the lower the threshold, the less
    memory and the more time (figures at :data:`MMAP_THRESHOLD_TRAINING`; docs/benchmarks.md,
    "Training memory").
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def configure_torch(
    *,
    threads: int | None = None,
    flush_denormal: bool = True,
    seed: int | None = None,
    mmap_threshold: int | None = None,
) -> None:
    """Set process-wide torch state; for entry points only (CLI, facade, server).

    Args:
        threads: intra-op CPU threads (None: leave torch's choice).
        flush_denormal: treat denormal floats as zero; the LSTM backward pass slows 5-12x on
            denormals on x86 CPUs (../shared/MODELS.md's "denormal trap").
        seed: seed torch's global generator (model initialisation, dropout).
        mmap_threshold: the process is about to train a model whose peak memory is its
            activations: fix glibc's mmap threshold at this many bytes
            (:func:`mmap_large_blocks`); see :func:`fenlei.models.training_mmap_threshold`.
    """
    if mmap_threshold is not None:
        mmap_large_blocks(mmap_threshold)
    torch.set_flush_denormal(flush_denormal)
    if threads is not None:
        torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)


def limit_tokenizer_threads(threads: int) -> None:
    """Hold HF ``tokenizers``' thread pool to ``threads`` in this process.

    Its batch encoding runs on a pool of one thread per core of the machine. A process that
    shares the machine with others of its kind (a Ray actor or worker holding a CPU or two)
    would otherwise oversubscribe the cores: two linear-model predictor actors on 2 cores
    ran 25 % slower with the default pool than with one thread each (docs/scale-out.md).
    Call it before the first tokenization (the pool is built then).
    """
    if threads <= 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    else:
        os.environ["RAYON_NUM_THREADS"] = str(threads)


@dataclass(frozen=True)
class Threads:
    """The intra-op thread count chosen for training, and why (shown in the progress line)."""

    count: int
    reason: str


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), as torch's default counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def training_threads(requested: int | None, *, load: float | None = None) -> Threads:
    """Threads for training: ``requested`` (``train.threads``) if set, else the cores that
    the 1-minute load average leaves free (at least one).

    Torch's own default is one thread per core; on a 2-core machine with a load of 9-12
    that made training 4.5x slower (and fenlei linear 6x slower) than one thread, with the
    same metrics: OpenMP threads spin-wait for cores other processes hold. On an idle
    machine the rule gives every core, as torch would.
    """
    cores = usable_cores()
    if requested:
        return Threads(requested, "train.threads")
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: torch's default
            return Threads(cores, f"{cores} cores")
    free = max(1, min(cores, int(cores - load + 0.5)))
    why = f"{cores} cores, 1-minute load {load:.1f}; --set train.threads=N to choose"
    return Threads(free, why)


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel job; ``Dist()`` is a single process.

    Example:
        >>> Dist().is_main
        True
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        """Read ``RANK`` and ``WORLD_SIZE`` (set by torchrun and Ray Train)."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other ranks to talk to (torch.distributed is initialised)."""
        return (
            self.world > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        )

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.active:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (itself in a single process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world
