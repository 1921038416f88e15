"""Stream decoded row batches into one preallocated array, on the host or a GPU.

The loader decodes each SQL batch into a ``(k, d)`` float32 host block and a mask of
usable rows, then hands both to a *sink*:

* :class:`HostSink` copies the usable rows straight into a NumPy ``(n, d)`` array.
* :class:`DeviceSink` fills a preallocated CuPy ``(n, d)`` array through two pinned
  staging buffers on two CUDA streams, in turn. A batch's rows are packed into one
  staging buffer and its copy to the device is *started* on that buffer's stream;
  ``put`` then returns, so the database read and decode of the next batch overlap the
  copy. Before a staging buffer is refilled, its stream is synchronised, so a copy in
  flight never sees its source overwritten. There is never a second full host copy:
  host memory is two ``(batch, d)`` pinned buffers.

The device operations are behind the small :class:`Transfer` interface so that the
rotation logic runs unchanged on the CPU in tests, with a NumPy stand-in whose copies
are deferred until the stream is synchronised (as a real asynchronous copy is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

STAGING_BUFFERS = 2


class Transfer(Protocol):
    """The device operations a DeviceSink needs (CuPy's on a GPU)."""

    def empty_device(self, shape: tuple[int, int]) -> Any:
        """An uninitialised float32 device array of ``shape``."""

    def empty_pinned(self, shape: tuple[int, int]) -> np.ndarray:
        """An uninitialised float32 page-locked host array of ``shape``."""

    def new_stream(self) -> Any:
        """A stream on which copies run in order, asynchronously to the host."""

    def copy_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        """Start copying host ``src`` into device ``dst`` (same shape) on ``stream``."""

    def synchronize(self, stream: Any) -> None:
        """Wait until every copy started on ``stream`` has finished."""


class CupyTransfer:
    """:class:`Transfer` with CuPy: pinned host memory, non-blocking streams."""

    def __init__(self):
        import cupy
        import cupyx

        self._cupy, self._cupyx = cupy, cupyx

    def empty_device(self, shape):
        return self._cupy.empty(shape, dtype=self._cupy.float32)

    def empty_pinned(self, shape):
        return self._cupyx.empty_pinned(shape, dtype=np.float32)

    def new_stream(self):
        return self._cupy.cuda.Stream(non_blocking=True)

    def copy_async(self, dst, src, stream):
        dst.set(src, stream=stream)  # asynchronous because src is pinned

    def synchronize(self, stream):
        stream.synchronize()


@dataclass
class Staging:
    """One pinned ``(batch_rows, d)`` buffer, its stream, and whether a copy is in flight."""

    buffer: np.ndarray
    stream: Any
    in_flight: bool = False


def pack_rows(block: np.ndarray, keep: np.ndarray | None, out: np.ndarray) -> int:
    """Copy the kept rows of ``block`` ((k, d) float32) to the front of ``out``; returns how many.

    ``keep`` is a (k,) bool mask or None (all rows). ``out`` must have >= that many rows.
    """
    if keep is None:
        out[: block.shape[0]] = block
        return block.shape[0]
    good = int(np.count_nonzero(keep))
    np.compress(keep, block, axis=0, out=out[:good])
    return good


class HostSink:
    """Fills a NumPy ``(n, d)`` float32 array; the CPU counterpart of DeviceSink."""

    def __init__(self, n: int, dim: int):
        self.out = np.empty((n, dim), dtype=np.float32)
        self.rows = 0

    def put(self, block: np.ndarray, keep: np.ndarray | None = None) -> int:
        """Append the kept rows of ``block`` ((k, d) float32); returns how many."""
        good = int(np.count_nonzero(keep)) if keep is not None else block.shape[0]
        check_room(self.rows, good, self.out.shape[0])
        pack_rows(block, keep, self.out[self.rows :])
        self.rows += good
        return good

    def finish(self) -> np.ndarray:
        """The ``(rows, d)`` filled part."""
        return self.out[: self.rows]


class DeviceSink:
    """Fills a device ``(n, d)`` float32 array through two pinned staging buffers.

    Args:
        n, dim: shape of the device array (rows that will be put at most).
        batch_rows: rows per staging buffer; larger blocks are put in pieces.
        transfer: the device operations (default: CuPy's).
    """

    def __init__(self, n: int, dim: int, batch_rows: int, transfer: Transfer | None = None):
        self.transfer = transfer if transfer is not None else CupyTransfer()
        self.out = self.transfer.empty_device((n, dim))
        self.n, self.batch_rows, self.rows, self._turn = n, batch_rows, 0, 0
        rows = max(1, min(batch_rows, n))  # never more pinned memory than the data
        self.staging = [Staging(self.transfer.empty_pinned((rows, dim)), self.transfer.new_stream())
                        for _ in range(STAGING_BUFFERS)]

    def put(self, block: np.ndarray, keep: np.ndarray | None = None) -> int:
        """Start copying the kept rows of ``block`` ((k, d) float32 host) to the device.

        Returns the number of rows appended. The copy may still be running on return.
        """
        size = self.staging[0].buffer.shape[0]
        appended = 0
        for start in range(0, block.shape[0], size):
            part = block[start : start + size]
            mask = keep[start : start + size] if keep is not None else None
            appended += self._put_piece(part, mask)
        return appended

    def _put_piece(self, block: np.ndarray, keep: np.ndarray | None) -> int:
        """Pack at most one staging buffer's worth of rows and start its copy."""
        good = int(np.count_nonzero(keep)) if keep is not None else block.shape[0]
        check_room(self.rows, good, self.n)
        if good == 0:
            return 0
        slot = self.staging[self._turn]
        if slot.in_flight:  # its previous copy may still be reading the buffer
            self.transfer.synchronize(slot.stream)
        pack_rows(block, keep, slot.buffer)
        target = self.out[self.rows : self.rows + good]
        self.transfer.copy_async(target, slot.buffer[:good], slot.stream)
        slot.in_flight = True
        self.rows += good
        self._turn = (self._turn + 1) % STAGING_BUFFERS
        return good

    def finish(self):
        """Wait for every copy; returns the ``(rows, d)`` filled part of the device array."""
        for slot in self.staging:
            if slot.in_flight:
                self.transfer.synchronize(slot.stream)
                slot.in_flight = False
        return self.out[: self.rows]


def check_room(rows: int, adding: int, capacity: int) -> None:
    if rows + adding > capacity:
        raise ValueError(f"sink overflow: {rows} + {adding} rows > capacity {capacity}")


def open_sink(kind: str, n: int, dim: int, batch_rows: int):
    """A HostSink ('cpu') or DeviceSink ('gpu') for n x dim float32 rows."""
    if kind == "gpu":
        return DeviceSink(n, dim, batch_rows)
    return HostSink(n, dim)
