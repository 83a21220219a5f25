"""Multi-process training (torch.distributed, launched by torchrun): who decides, who writes, how batches split.

One process per device. ``Dist`` is the run's view of the process group; with one process (no torchrun, or
``--nproc_per_node=1``) every helper here is a plain call and the loop runs exactly as it always did.

- Decisions: anything that depends on files or on one process's view (is there a run to resume, does the
  checkpoint match, can the data be read) is decided by rank 0 and broadcast (``decide``); work every rank does
  reports its outcome to all (``agree``). A ``UserError`` on any rank is raised, with the same message, on every
  rank, so no rank is left waiting in a collective that the others never reach.
- Weights: rank 0 builds the model (the impulse fit runs there only) and broadcasts every parameter and buffer;
  ``check_identical`` then compares a SHA-256 of every rank's weights and refuses to train on a mismatch.
- Batches: ``--batch-size`` is the global batch. ``GlobalBatches`` draws each epoch's batches exactly as the
  single-process loader does (same generator, same seed, same permutation) and gives rank r the entries
  r, r + W, r + 2W, ... of every global batch (the striding of ``DistributedSampler``, applied per batch so that
  nothing is padded or repeated). A rank whose share of a short last batch is empty gets one stand-in sample with
  loss weight 0. The loss of rank r is weighted by (its samples · W / global batch), so DDP's gradient average
  is the mean over the global batch: a run's numbers do not depend on the process count beyond the order of
  floating-point reductions (and beyond random augmentation / mixup draws, which each process makes itself).
"""
from __future__ import annotations

import atexit
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from .errors import UserError

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    created: bool = False      # this module created the process group (and destroys it at exit)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # --- collectives on Python objects (small ones: decisions, error messages, init records, RNG states) -----
    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist
            dist.barrier()

    # --- decisions and errors ------------------------------------------------------------------------------
    def decide(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its (picklable) result on every rank; an exception there is
        raised on every rank (a UserError with its own message)."""
        if not self.active:
            return fn()
        outcome, error = None, None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
                error = e
                outcome = _describe(e, self.rank)
        outcome = self.broadcast_object(outcome)
        if error is not None:
            raise error
        return _unwrap(outcome)

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; when it fails on any rank, raise the lowest failing rank's error on all."""
        if not self.active:
            return fn()
        result, error, outcome = _attempt(fn, self.rank)
        outcomes = self.gather_objects(outcome)
        if error is not None:
            raise error
        for o in outcomes:
            _unwrap(o)
        return result

    def main_only(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (writing files) on rank 0; every rank hears whether it failed."""
        self.agree(lambda: fn() if self.is_main else None)

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """Rank 0 runs ``fn`` first (a download, a cache), then the other ranks do; a failure anywhere is raised
        on every rank."""
        if not self.active:
            return fn()
        result, error, outcome = _attempt(fn, self.rank) if self.is_main else (None, None, ("ok", None))
        outcome = self.broadcast_object(outcome)
        if error is not None:
            raise error
        _unwrap(outcome)
        if self.is_main:
            self.agree(lambda: None)  # joins the other ranks' round
            return result
        return self.agree(fn)

    # --- tensors -------------------------------------------------------------------------------------------
    def all_reduce_sum(self, values: List[float], device: torch.device) -> List[float]:
        """Sums over ranks of a few numbers (float64)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    @torch.no_grad()
    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers (persistent or not) on every rank, in place."""
        if not self.active:
            return
        import torch.distributed as dist
        for t in _tensors(module):
            dist.broadcast(t.data if isinstance(t, torch.nn.Parameter) else t, src=0)

    @torch.no_grad()
    def broadcast_buffers_(self, module: torch.nn.Module) -> None:
        if not self.active:
            return
        import torch.distributed as dist
        for b in module.buffers():
            dist.broadcast(b, src=0)

    def check_identical(self, module: torch.nn.Module, what: str = "model weights") -> str:
        """SHA-256 of ``module``'s parameters and buffers; raises RuntimeError on every rank unless all ranks
        hold bit-identical values. Returns the digest."""
        digest = weights_digest(module)
        if not self.active:
            return digest
        digests = self.gather_objects(digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"{what} differ between ranks after the broadcast from rank 0 (SHA-256 per rank: "
                               f"{[d[:12] for d in digests]})")
        return digest


def _tensors(module: torch.nn.Module):
    """Every parameter and buffer (non-persistent ones included), each once, in a fixed order."""
    seen = set()
    for _, t in list(module.named_parameters(remove_duplicate=True)) + list(module.named_buffers(
            remove_duplicate=True)):
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer of ``module`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    names = dict(module.named_parameters(remove_duplicate=True))
    names.update(module.named_buffers(remove_duplicate=True))
    for name in sorted(names):
        t = names[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _attempt(fn: Callable[[], Any], rank: int) -> tuple:
    """(result, None, ("ok", None)) or (None, the exception, its description for the other ranks)."""
    try:
        return fn(), None, ("ok", None)
    except Exception as e:  # noqa: BLE001
        return None, e, _describe(e, rank)


def _describe(e: Exception, rank: int) -> tuple:
    if isinstance(e, UserError):
        return ("user", e.problem, e.fix)
    return ("crash", f"rank {rank} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _unwrap(outcome: tuple) -> Any:
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "user":
        raise UserError(outcome[1], outcome[2])
    raise RuntimeError(outcome[1])


# --- setting up ---------------------------------------------------------------------------------------------
_CURRENT: Optional[Dist] = None


def current() -> Dist:
    """The process group this process is part of (one process: rank 0 of 1); nothing is created here."""
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=dist.get_backend())
    except (ImportError, RuntimeError):  # pragma: no cover
        pass
    return Dist()


def launched_world_size() -> int:
    """The process count a launcher (torchrun) asked for, 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer",
                        "launch with torchrun --nproc_per_node=N") from None


def setup(device_type: str) -> Dist:
    """Join (or create, from torchrun's environment) the process group: NCCL for CUDA, gloo for the CPU.

    An existing group (made by the caller) is used as it is. Without a launcher this returns rank 0 of 1 and
    creates nothing. The group this creates is destroyed when the process exits.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return current()
    world = launched_world_size()
    if world == 1:
        return Dist()
    if not dist.is_available():  # pragma: no cover
        raise UserError("this torch build has no torch.distributed", "run one process")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UserError(f"WORLD_SIZE is {world} but {var} is not set", "launch with torchrun "
                            "--nproc_per_node=N (it sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices",
                            "use --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy)
    d = current()
    d.created = True
    return d


def _destroy() -> None:
    """At exit: release what still holds the group (a DistributedDataParallel wrapper in a reference cycle), then
    destroy it while the interpreter is whole; gloo's threads otherwise may abort the process at shutdown."""
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (and without a process group)."""
    return current().is_main


# --- batches ------------------------------------------------------------------------------------------------
class GlobalBatches(Sampler):
    """A batch sampler: each epoch's global batches, drawn as ``DataLoader(dataset, batch_size, shuffle=True,
    generator=torch.Generator().manual_seed(seed), drop_last)`` draws them (after one more worker-seed draw, as
    the loop of earlier versions did), and this rank's share
    of each (entries rank, rank + W, ...). ``set_epoch_seed`` before every epoch; ``steps[i]`` is then
    (this rank's sample count, the global batch size) of step i; a step whose share is empty yields one stand-in
    sample (count 0: its loss weight is 0)."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1, drop_last: bool = False):
        self.size, self.batch_size, self.rank, self.world, self.drop_last = size, batch_size, rank, world, drop_last
        self.seed: Optional[int] = None
        self.steps: List[tuple] = []
        self._shares: List[List[int]] = []

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def set_epoch_seed(self, seed: int) -> None:
        self.seed = seed
        order = DataLoader(range(self.size), batch_size=self.batch_size, shuffle=True, drop_last=self.drop_last,
                           generator=torch.Generator().manual_seed(seed))
        # Earlier versions opened their loader twice per epoch (the progress bar did), drawing two worker seeds
        # from the generator before the permutation; drawing the same keeps every earlier run's data order.
        iter(order)
        self._shares, self.steps = [], []
        for batch in order:
            idx = batch.tolist()
            share = idx[self.rank::self.world]
            self.steps.append((len(share), len(idx)))
            self._shares.append(share or idx[:1])

    def __iter__(self):
        if self.seed is None:
            raise RuntimeError("GlobalBatches.set_epoch_seed must be called before each epoch")
        return iter(list(self._shares))
