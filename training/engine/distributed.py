"""torchrun-native process-group set-up with a clean one-process fallback.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`init_distributed` reads them and initialises the default group (NCCL on CUDA, gloo on
CPU). Without them the run is a single process and every helper below is a no-op, so one code path serves a laptop,
one GPU and many nodes.

Elastic restarts (``torchrun --max-restarts``): the agent hosts the process group's TCPStore
(``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps the *same* server across restarts, so the keys of the previous
attempt's group (each rank's gloo listening address, NCCL's unique id) are still there when the restarted workers
meet again. A restarted rank that reads its peer's key before the peer has rewritten it connects to the dead
process's port ("Connection refused", or a hang). :func:`init_distributed` therefore scopes the group's keys by the
attempt (see :func:`_elastic_store`).

Shutdown: gloo's worker threads release a finished collective's tensors a moment *after* the caller has resumed,
and releasing the last C++ reference to a tensor created in Python takes the GIL. If that moment falls into
interpreter shutdown, Python ends the thread with ``pthread_exit``, whose unwinding through a ``noexcept`` destructor
aborts the whole process ("terminate called without an active exception", SIGABRT) after a successful run.
``destroy_process_group`` cannot join those threads: a DistributedDataParallel wrapper keeps the group alive beyond
it. The collectives below therefore hand the backend private buffers only and keep them until the backend has let
go of them; :func:`cleanup` waits for that, so no backend thread touches a Python object once it returns.
"""

from __future__ import annotations

import os
import pickle
import random
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _elastic_store(world_size: int, timeout: timedelta) -> dist.PrefixStore | None:
    """The agent's store with this restart attempt's own key space, or None when torchrun did not share its store.

    ``TORCHELASTIC_RESTART_COUNT`` is one value for all workers of one agent, so on a single node (``--standalone``,
    the common case) every worker of attempt k uses ``mdp/attempt_k/`` and never sees attempt k-1's keys. Agents on
    different nodes count restarts separately (a node restarted for a membership change does not count it), so with
    several nodes the prefix could differ between ranks: there we keep torch's own behaviour and say how to get a
    fresh store per restart instead.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    if local_world_size != world_size:
        if _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0:
            warnings.warn(
                "torchrun shares one TCPStore across restarts and this run spans several nodes: a restarted group may "
                "read its peers' addresses from the failed attempt and fail to connect. Launch every node with "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store per restart); see docs/TRAINING.md",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        if not os.environ.get(name):
            raise RuntimeError(f"TORCHELASTIC_USE_AGENT_STORE=True but {name} is not set: not launched by torchrun?")
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"mdp/attempt_{attempt}/", store)


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise from torchrun's environment, or fall back to one process.

    ``device``: "auto" (CUDA if available, else CPU), "cpu" or "cuda". Each rank uses ``cuda:LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # the store's waits (peers joining) get torch's default process-group timeout, as with env://
        store = _elastic_store(world_size, dist.default_pg_timeout)
        extra = {} if store is None else {"store": store, "rank": rank, "world_size": world_size}
        dist.init_process_group(backend=backend, device_id=target if use_cuda else None, **extra)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


# Buffers handed to a collective that the backend may still hold (see the module docstring).
_handed_over: list[torch.Tensor] = []


def _hand_over(*buffers: torch.Tensor) -> None:
    """Keep ``buffers`` (private to this module) until the backend releases them; forget the released ones."""
    _handed_over.extend(buffers)
    _handed_over[:] = [buffer for buffer in _handed_over if buffer._use_count() > 1]


def _wait_for_backend_release(timeout: float = 60.0) -> None:
    """Return once the backend holds none of the handed-over buffers (sleeping lets its threads take the GIL)."""
    deadline = time.monotonic() + timeout
    while any(buffer._use_count() > 1 for buffer in _handed_over):
        if time.monotonic() > deadline:
            warnings.warn(
                f"the distributed backend still holds {len(_handed_over)} buffer(s) after {timeout:.0f} s",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        time.sleep(0.001)
    _handed_over.clear()


def _all_reduce_(tensor: torch.Tensor, op) -> torch.Tensor:
    if is_initialized():
        buffer = tensor.clone()
        dist.all_reduce(buffer, op=op)
        tensor.copy_(buffer)
        _hand_over(buffer)
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity on one process)."""
    return _all_reduce_(tensor, dist.ReduceOp.SUM)


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (identity on one process)."""
    return _all_reduce_(tensor, dist.ReduceOp.MAX)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ([N, ...], same shape on every rank) over ranks along dim 0, rank order."""
    if not is_initialized():
        return tensor
    source = tensor.contiguous().clone()
    gathered = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(gathered, source)
    _hand_over(source, gathered)
    return gathered.clone()


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` on one process)."""
    if not is_initialized():
        return [obj]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    sizes = all_gather_cat(torch.tensor([payload.numel()], device=device)).tolist()
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    rows = all_gather_cat(padded[None]).cpu()
    return [pickle.loads(rows[rank, :size].numpy().tobytes()) for rank, size in enumerate(sizes)]


def cleanup() -> None:
    """Wait until the backend has released every buffer handed to it, then destroy the default group."""
    if is_initialized():
        _wait_for_backend_release()
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch with a per-rank seed so ranks draw different augmentations/mixing."""
    rank_seed = seed + rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    return rank_seed
