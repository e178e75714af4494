"""Data parallelism over ``torch.distributed``: ranks, shards, gathers and failure reports.

Launchers (``torchrun``, ``accelerate launch``) start one process per rank and set
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`current_world` starts the process group from them the first time it is
asked (gloo for CPU tensors and objects, NCCL for CUDA tensors when CUDA is
there). treeopt has no launcher of its own. Without those variables the world has
one rank and every helper here is a no-op, so one-process code paths stay as
they were.

Failures: :func:`run_on_every_rank` lets each rank do its part, then the ranks
compare notes; if any failed, every rank raises, rank 0 with one line naming the
failed rank and the others with a :class:`PeerFailure` the CLI does not print
(one line per run, not one per rank). A rank killed outright closes its
connections, which the survivors turn into the same one line; a launcher's
SIGTERM becomes an exception too, so partial work is checkpointed on the way out.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, TypeVar

from treeopt.errors import TreeoptError, first_line

T = TypeVar("T")
# A rank that finished its shard waits this long at most for the slowest one; peers
# that die close their sockets, which ends the wait at once.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
# A rank other than 0 that must fail waits this long before exiting, so that rank 0
# prints the run's one error line before the launcher tears the job down.
QUIET_EXIT_DELAY_SECONDS = 1.0
RESUME_HINT = "rerun the same command with --resume to continue"


class PeerFailure(TreeoptError):
    """Raised on ranks other than 0 when the run fails: rank 0 reports it, they stay quiet.

    ``quiet`` tells the CLI to exit with code 2 without printing.
    """

    quiet = True


class LauncherStop(TreeoptError):
    """The launcher stopped this rank (SIGTERM: another rank failed); quiet off rank 0."""

    def __init__(self, message: str, quiet: bool) -> None:
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size``, and its node-local rank."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that merges, writes outputs and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def failure(self, message: str) -> TreeoptError:
        """The error every rank raises for a failed run: loud on rank 0 only.

        Rank 0 is on its way out and must print this line: a launcher's SIGTERM (sent
        when another rank exits first) no longer interrupts it.
        """
        if self.is_main:
            if self.distributed:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return TreeoptError(message)
        time.sleep(QUIET_EXIT_DELAY_SECONDS)
        return PeerFailure(message)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TreeoptError(f"the launcher set {name}={value!r}, not an integer") from None


@cache
def current_world() -> World:
    """The run's :class:`World`; starts the process group on first use under a launcher."""
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise TreeoptError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if not dist.is_initialized():
        # gloo carries the objects we gather (CPU); NCCL the gradients of CUDA models.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(world.local_rank)  # else every rank's context lands on GPU 0
        try:
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:  # no rendezvous: address, port, peers
            raise TreeoptError(f"rank {world.rank} of {world.size} cannot join the run: "
                               f"{first_line(exc)}") from None
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    atexit.register(_leave)
    return world


# Whether the last thing the ranks did together was finish a run (see leave_together).
_ENDED_TOGETHER = {"value": False}


def _leave() -> None:
    """At exit: tear the process group down before the interpreter does. Left to exit,
    gloo's transport threads can abort the process ("terminate called without an
    active exception") even after a run that succeeded. After a run that ended on
    every rank the ranks first meet, so none closes a connection another still reads;
    after a failure they do not (a peer may be gone, or busy elsewhere)."""
    import gc

    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):  # on the way out: a dead peer adds no noise
            if _ENDED_TOGETHER["value"]:
                dist.barrier()
            dist.destroy_process_group()
    gc.collect()  # the transport's threads joined now, not by static destructors


def leave_together() -> None:
    """Mark the end of a run that succeeded on every rank (after a collective that says
    so): at exit the ranks then meet once more before closing their connections."""
    _ENDED_TOGETHER["value"] = current_world().distributed


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """The launcher stops the survivors of a failed rank with SIGTERM: unwind (saving
    partial work) and report it instead of vanishing."""
    raise LauncherStop(f"stopped by the launcher (signal {signum}): another rank failed or "
                       f"was killed; {RESUME_HINT}", quiet=not current_world().is_main)


def rank_device(device: str) -> str:
    """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under a launcher."""
    world = current_world()
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def shard_by_length(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``lengths`` split into ``parts`` shards of nearly equal total length.

    Longest first, each to the shard with the least so far (ties: the lower shard);
    every shard lists its indices in increasing order. Deterministic, so every rank
    computes the same split.
    """
    if parts < 1:
        raise TreeoptError(f"cannot split work into {parts} shards")
    loads = [0] * parts
    shards: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = min(range(parts), key=lambda p: (loads[p], p))
        shards[target].append(index)
        loads[target] += lengths[index]
    return [sorted(shard) for shard in shards]


def _collective(call: Callable[[], T]) -> T:
    """Run a collective; a peer that died (closed connection, timeout) is one line."""
    _ENDED_TOGETHER["value"] = False  # a new exchange: the ranks are no longer done
    try:
        return call()
    except RuntimeError as exc:
        raise current_world().failure(
            f"lost contact with another rank ({first_line(exc)}); it probably failed or was "
            f"killed; {RESUME_HINT}") from None


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    world = current_world()
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    _collective(lambda: dist.all_gather_object(gathered, value))
    return gathered


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's ``value`` in rank order on rank 0; None on the others."""
    world = current_world()
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * world.size if world.is_main else None
    _collective(lambda: dist.gather_object(value, gathered, dst=0))
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (what the others pass is ignored)."""
    world = current_world()
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value if world.is_main else None]
    _collective(lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def all_reduce_sum(tensor: Any) -> Any:
    """Sum ``tensor`` over the ranks, in place (and return it)."""
    if current_world().distributed:
        import torch.distributed as dist

        _collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
    return tensor


def agree(error: str | None) -> None:
    """Every rank passes its own failure (None: it succeeded); all raise if any failed.

    Rank 0 raises one line naming the first failed rank; the others raise a quiet
    :class:`PeerFailure`. In a one-rank world the error is raised as it is.
    """
    world = current_world()
    if not world.distributed:
        if error is not None:
            raise TreeoptError(error)
        return
    failed = [(rank, message) for rank, message in enumerate(all_gather(error)) if message]
    if failed:
        rank, message = failed[0]
        raise world.failure(f"rank {rank} of {world.size} failed: {message}; {RESUME_HINT}")


def run_on_every_rank(work: Callable[[], T]) -> T:
    """``work()`` on this rank, then :func:`agree`: its result only if every rank succeeded.

    A TreeoptError (or another exception: its first line) on any rank fails all of
    them. Ctrl-C and the launcher's SIGTERM propagate as they are.
    """
    if not current_world().distributed:
        return work()
    result: T | None = None
    error: str | None = None
    try:
        result = work()
    except (PeerFailure, LauncherStop):
        raise
    except Exception as exc:  # reported by rank 0 in one line, not as a traceback
        error = str(exc) if isinstance(exc, TreeoptError) else \
            f"{type(exc).__name__}: {first_line(exc)}"
    agree(error)
    return result  # type: ignore[return-value]


# ------------------------------------------------------------------ data-parallel training
def local_share(items: Sequence[Any], length: Callable[[Any], int]) -> list[Any]:
    """This rank's part of a global batch, balanced by ``length`` (all of it in one process)."""
    world = current_world()
    if not world.distributed:
        return list(items)
    shard = shard_by_length([length(item) for item in items], world.size)[world.rank]
    return [items[i] for i in shard]


def summed_counts(counts: Sequence[int]) -> list[int]:
    """``counts`` summed element-wise over the ranks."""
    import torch

    total = all_reduce_sum(torch.tensor(list(counts), dtype=torch.float64))
    return [round(float(value)) for value in total]


def broadcast_tensors(tensors: Sequence[Any]) -> None:
    """Overwrite every rank's ``tensors`` (in place) with rank 0's: one starting point."""
    if not current_world().distributed:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in tensors:
            _collective(lambda t=tensor: dist.broadcast(t.data, src=0))


def sync_gradients(parameters: Sequence[Any]) -> bool:
    """Sum the parameters' gradients over the ranks, in place; whether any has one.

    What DDP's all-reduce does, with a sum instead of a mean because each rank's
    loss is already divided by the whole batch's counts
    (:class:`treeopt.model.training.LossTotals`). A gradient that some ranks lack
    (no positions there) counts as zeros; one that every rank lacks stays None, as
    in one process, so the optimizer leaves that parameter alone there too. One
    flat all-reduce per device and dtype.
    """
    import torch
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    have = summed_counts([p.grad is not None for p in parameters])
    used = [p for p, count in zip(parameters, have, strict=True) if count]
    buckets: dict[tuple[Any, Any], list[Any]] = {}
    for parameter in used:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        buckets.setdefault((parameter.grad.device, parameter.grad.dtype), []).append(parameter)
    for members in buckets.values():
        grads = [p.grad for p in members]
        flat = all_reduce_sum(_flatten_dense_tensors(grads))
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)
    return bool(used)
