"""Where a benchmark's data lives during training: resident on the GPU, or streamed from host memory.

On CUDA the trainer keeps a benchmark's splits on the GPU when they fit with
room left for training (:func:`fits_on_device`, a pure rule), so a batch is a
gather on the device. A cache that does not fit (Taskonomy at 256x256 is
hundreds of GB) stays where it is, usually a memory map of the cache file, and
:class:`StreamSplit` feeds it: worker threads gather the next batches' rows
into pinned host buffers while the GPU trains on the current one, and each is
copied to the device asynchronously.

Streaming yields exactly the batches (rows, order, values) a resident split
would, so the choice changes speed and memory, never numbers. On CPU there is
nothing to decide: the data is used where it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from branchbench.core.benchmark import Benchmark, Split

RESERVE_FRACTION = 0.25
RESERVE_MIN_BYTES = 4 << 30
PREFETCH = 3  # batches gathered ahead of the one being trained on

Targets = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def fits_on_device(
    data_bytes: int,
    free_bytes: int,
    total_bytes: int,
    *,
    reserve_fraction: float = RESERVE_FRACTION,
    reserve_min: int = RESERVE_MIN_BYTES,
) -> bool:
    """Whether data of ``data_bytes`` may live on a device with ``free_bytes`` of ``total_bytes`` free.

    It may when, once placed, at least ``max(reserve_fraction * total_bytes,
    reserve_min)`` stays free for the model, activations and optimiser state
    (a quarter of the device, at least 4 GiB, by default).
    """
    reserve = max(reserve_fraction * total_bytes, reserve_min)
    return data_bytes + reserve <= free_bytes


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when ``cuda`` means the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def split_nbytes(split: Split) -> int:
    tensors = [split.x, *split.y.values()]
    return sum(t.element_size() * t.nelement() for t in tensors)


def benchmark_nbytes(bench: Benchmark) -> int:
    """Bytes of every split's inputs and stored targets (what residency would place on the device)."""
    return sum(split_nbytes(split) for split in bench.splits.values())


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device for this process: the driver's free memory plus
    what torch's caching allocator holds unused."""
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached)), int(total)


def resident(bench: Benchmark, device: torch.device) -> bool:
    """Whether the trainer should keep ``bench``'s splits on ``device`` (always on CPU)."""
    if device.type != "cuda":
        return True
    free, total = device_memory(device)
    return fits_on_device(benchmark_nbytes(bench), free, total)


class StreamSplit:
    """A split (or some of its rows) read from host memory batch by batch; never copied whole.

    ``rows`` (None: all) are indices into ``base``; :meth:`subset` composes them,
    so a held-out part of a memory-mapped training split costs an index, not a copy.
    """

    def __init__(self, base: Split, rows: torch.Tensor | None = None) -> None:
        self.base = base
        self.rows = rows

    def __len__(self) -> int:
        return len(self.base) if self.rows is None else int(self.rows.numel())

    @property
    def device(self) -> torch.device:
        return self.base.x.device

    def subset(self, index: torch.Tensor) -> StreamSplit:
        index = index.cpu()
        return StreamSplit(self.base, index if self.rows is None else self.rows[index])

    def _gather(self, index: torch.Tensor, pin: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        def take(source: torch.Tensor) -> torch.Tensor:
            out = torch.empty((index.numel(), *source.shape[1:]), dtype=source.dtype, pin_memory=pin)
            return torch.index_select(source, 0, index, out=out)

        return take(self.base.x), {t: take(v) for t, v in self.base.y.items()}

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, targets: Targets | None = None
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Batches of the rows ``order`` (positions in this split), on ``device``, in order, the next
        ones gathered by worker threads meanwhile (page faults of a memory map block a thread, not the GPU).

        Buffers are pinned when ``device`` is CUDA (torch's caching host
        allocator keeps a pinned block until its asynchronous copy is done).
        ``targets`` decodes each batch's targets on the device.
        """
        order = order.cpu()
        rows = order if self.rows is None else self.rows[order]
        chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        pin = device.type == "cuda"
        with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="batches") as pool:
            pending = deque(pool.submit(self._gather, chunk, pin) for chunk in chunks[:PREFETCH])
            for i in range(len(chunks)):
                x, y = pending.popleft().result()
                if i + PREFETCH < len(chunks):
                    pending.append(pool.submit(self._gather, chunks[i + PREFETCH], pin))
                x = x.to(device, non_blocking=pin)
                y = {t: v.to(device, non_blocking=pin) for t, v in y.items()}
                yield x, (targets(y) if targets is not None else y)
