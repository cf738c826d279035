"""Several processes working as one, launched by ``torchrun`` (``torch.distributed``).

``torchrun --nproc_per_node N ...`` starts N copies of a program and gives each the environment
variables ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``).
:func:`setup` reads them and joins the process group: ``gloo`` for a CPU device, ``nccl`` for
CUDA, where rank ``LOCAL_RANK`` of a node takes GPU ``LOCAL_RANK``. Without ``torchrun`` (no
``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function here is the one-process identity, so callers
need no special case.

Before :func:`setup`, :func:`rank` and :func:`world_size` read the environment, so a program can
decide early which process talks (``is_main``: rank 0 writes files and prints).

Collectives (every rank must call them, in the same order):

* :func:`all_reduce_sums` -- sum tensors over the ranks; differentiable: the backward pass passes
  the gradient of the sum to each rank's own part unchanged, so after :func:`all_reduce_grads`
  (which sums the gradients) the parameters' gradients are those of a loss computed from the global
  sums in one process.
* :func:`all_reduce_grads` -- sum the gradients of parameters over the ranks; a parameter keeps no
  gradient (``None``) only when no rank gave it one, as in one process.
* :func:`broadcast_module` -- rank 0's parameters and floating-point buffers to every rank.
* :func:`broadcast_flag` -- rank 0's decision (e.g. a time limit reached) to every rank.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Sequence

import torch

__all__ = ["DistributedError", "all_reduce_grads", "all_reduce_sums", "broadcast_flag", "broadcast_module",
           "is_main", "launched", "rank", "setup", "share", "teardown", "world_size"]


class DistributedError(RuntimeError):
    """A process group that cannot be set up (backend missing, bad device for the launch)."""


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """Number of processes (the group's, else ``WORLD_SIZE``, else 1)."""
    if _active():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (the group's, else ``RANK``, else 0)."""
    if _active():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True for rank 0, the process that writes files and prints."""
    return rank() == 0


def setup(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group of a ``torchrun`` launch (once; later calls only return the device)
    and return the device this rank computes on: ``device`` itself on the CPU (backend ``gloo``),
    ``cuda:LOCAL_RANK`` for a CUDA device (backend ``nccl``; an explicit ``cuda:N`` is replaced,
    as each rank needs its own GPU). Without a launch, returns ``torch.device(device)``."""
    device = torch.device(device)
    if not launched():
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DistributedError(f"process LOCAL_RANK={local} needs GPU {local} but {torch.cuda.device_count()} "
                                   f"are visible: start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if _active():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or not (dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()):
        raise DistributedError(f"torch.distributed with the {backend} backend is not available in this PyTorch build")
    dist.init_process_group(backend, init_method="env://")
    atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (no-op without one)."""
    if _active():
        import torch.distributed as dist

        dist.destroy_process_group()


def share(items: Sequence, r: int | None = None, n: int | None = None) -> Sequence:
    """This rank's part of ``items``: the ``r``-th of ``n`` contiguous parts (``numpy.array_split``'s
    sizes: the first ``len(items) % n`` parts one longer), in order; an empty part when there are
    fewer items than ranks. Defaults: :func:`rank`, :func:`world_size`."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    q, extra = divmod(len(items), n)
    start = r * q + min(r, extra)
    return items[start:start + q + (r < extra)]


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum of ``x`` over the ranks. Backward: the incoming gradient, unchanged (the
    derivative of the sum with respect to this rank's term)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        out = x.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


def all_reduce_sums(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: sum over the ranks}`` of every rank's ``{name: tensor}`` (same names, shapes and
    dtypes on every rank; one collective per dtype). Differentiable as in the module docstring.
    Without a group: ``tensors`` unchanged."""
    if not _active() or world_size() == 1:
        return tensors
    names = sorted(tensors)
    out = {}
    for dtype in sorted({tensors[k].dtype for k in names}, key=str):
        keys = [k for k in names if tensors[k].dtype == dtype]
        flat = _SumOverRanks.apply(torch.cat([tensors[k].reshape(-1) for k in keys]))
        for k, part in zip(keys, flat.split([tensors[k].numel() for k in keys])):
            part = part.view(tensors[k].shape)
            out[k] = part if tensors[k].requires_grad else part.detach()
    return out


def all_reduce_grads(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace the gradient of every trainable parameter by its sum over the ranks (one collective
    per dtype). A parameter without a gradient on this rank contributes zeros; it gets the sum if
    any rank had a gradient, else keeps ``None`` (an optimizer then skips it, as in one process)."""
    if not _active() or world_size() == 1:
        return
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    for dtype in sorted({p.dtype for p in params}, key=str):
        group = [p for p in params if p.dtype == dtype]
        dev = group[0].device
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                         + [torch.tensor([float(p.grad is not None) for p in group], dtype=dtype, device=dev)])
        dist.all_reduce(flat)
        parts = flat.split([p.numel() for p in group] + [len(group)])
        for p, g, has in zip(group, parts, parts[-1].tolist()):
            p.grad = g.view_as(p).clone() if has > 0 else None


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and floating-point buffers copied into ``module`` on every rank (in place)."""
    if not _active() or world_size() == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            dist.broadcast(t.data, 0)


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a collective)."""
    if not _active() or world_size() == 1:
        return flag
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, 0)
    return bool(box[0])
