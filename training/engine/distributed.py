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
"""
from __future__ import annotations

import os
import random
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
                RuntimeWarning, stacklevel=3)
        return None
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        if not os.environ.get(name):
            raise RuntimeError(f"TORCHELASTIC_USE_AGENT_STORE=True but {name} is not set: not launched by torchrun?")
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size, is_master=False,
                          timeout=timeout)
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


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity on one process)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (identity on one process)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (identity on one process)."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch with a per-rank seed so ranks draw different augmentations/mixing."""
    rank_seed = seed + rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)
    return rank_seed
