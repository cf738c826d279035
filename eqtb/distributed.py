"""Process-group helpers for runs under ``torchrun`` (or any launcher that sets ``WORLD_SIZE``,
``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).

A process is *distributed* when ``WORLD_SIZE`` > 1. :func:`init` creates the default
``torch.distributed`` process group from those variables (backend ``gloo``: CPU tensors, every
machine; ``nccl`` for CUDA tensors) and is a no-op in a single process or when the group exists;
:func:`destroy` tears it down. :func:`world_size`, :func:`rank` and :func:`is_main` answer from the
group when there is one, else from the environment (1, 0 and True in a plain process), so the same
code runs under ``torchrun`` and alone. Rank 0 is the main process: it writes the outputs.
"""

from __future__ import annotations

import os

__all__ = ["destroy", "init", "is_distributed", "is_main", "rank", "world_size"]


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes: the process group's size, else ``WORLD_SIZE`` (default 1)."""
    if _group_ready():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 .. world_size - 1): the process group's, else ``RANK`` (default 0)."""
    if _group_ready():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def is_distributed() -> bool:
    """True when more than one process takes part."""
    return world_size() > 1


def init(backend: str = "gloo") -> bool:
    """Create the default process group from the environment (``torch.distributed.init_process_group``
    with ``init_method="env://"``) when ``WORLD_SIZE`` > 1 and none exists yet. Returns whether this
    call created it (False in a single process or when a group already exists). RuntimeError when
    ``WORLD_SIZE`` > 1 but torch has no distributed support or the backend is unavailable."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _group_ready():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("WORLD_SIZE > 1 but the gloo backend of torch.distributed is not available")
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def destroy() -> None:
    """Destroy the default process group, if there is one."""
    if _group_ready():
        import torch.distributed as dist

        dist.destroy_process_group()
