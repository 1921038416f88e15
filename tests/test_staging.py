"""Double-buffered host->device staging, run on the CPU with a NumPy stand-in device.

The stand-in defers every copy until its stream is synchronised, as a real
asynchronous copy may, and checks at that moment that the staging buffer still holds
what it held when the copy was started. So a sink that refilled a buffer whose copy was
still in flight would corrupt the data here exactly as it would on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_cluster.loading import decode_blobs, usable_rows
from gpu_cluster.staging import DeviceSink, HostSink, open_sink


class Stream:
    def __init__(self, number):
        self.number, self.pending = number, []


class DeferredTransfer:
    """A Transfer whose copies run only when their stream is synchronised."""

    def __init__(self):
        self.events: list[tuple] = []
        self.pinned: list[np.ndarray] = []
        self.streams: list[Stream] = []
        self.overwritten_in_flight = 0

    def empty_device(self, shape):
        return np.full(shape, np.nan, dtype=np.float32)

    def empty_pinned(self, shape):
        self.pinned.append(np.full(shape, np.nan, dtype=np.float32))
        return self.pinned[-1]

    def new_stream(self):
        self.streams.append(Stream(len(self.streams)))
        return self.streams[-1]

    def buffer_of(self, src):
        return next(i for i, b in enumerate(self.pinned) if np.shares_memory(b, src))

    def copy_async(self, dst, src, stream):
        assert dst.shape == src.shape and dst.dtype == src.dtype == np.float32
        stream.pending.append((dst, src, src.copy()))
        self.events.append(("copy", self.buffer_of(src), stream.number, src.shape[0]))

    def synchronize(self, stream):
        for dst, src, snapshot in stream.pending:
            if not np.array_equal(src, snapshot):
                self.overwritten_in_flight += 1
            dst[...] = src
        stream.pending.clear()
        self.events.append(("sync", stream.number))


def batches(sizes, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((k, dim)).astype(np.float32) for k in sizes]


def test_rows_arrive_intact_and_in_order():
    blocks = batches([10, 10, 10, 7])
    transfer = DeferredTransfer()
    sink = DeviceSink(37, 8, batch_rows=10, transfer=transfer)
    for b in blocks:
        sink.put(b)
    out = sink.finish()
    np.testing.assert_array_equal(out, np.concatenate(blocks))
    assert transfer.overwritten_in_flight == 0


def test_buffers_alternate_and_are_reused_only_after_a_sync():
    transfer = DeferredTransfer()
    sink = DeviceSink(40, 8, batch_rows=10, transfer=transfer)
    for b in batches([10, 10, 10, 10]):
        sink.put(b)
    sink.finish()
    assert transfer.events == [
        ("copy", 0, 0, 10), ("copy", 1, 1, 10),   # both buffers in flight at once
        ("sync", 0), ("copy", 0, 0, 10),          # buffer 0 refilled only after its sync
        ("sync", 1), ("copy", 1, 1, 10),
        ("sync", 0), ("sync", 1),                 # finish waits for both
    ]


def test_put_returns_before_the_copy_has_run():
    transfer = DeferredTransfer()
    sink = DeviceSink(20, 8, batch_rows=10, transfer=transfer)
    block = batches([10])[0]
    sink.put(block)
    assert np.isnan(sink.out).all()  # the copy is in flight: the next read overlaps it
    np.testing.assert_array_equal(sink.finish(), block)


def test_the_stand_in_detects_a_buffer_overwritten_in_flight():
    transfer = DeferredTransfer()
    stream, buf = transfer.new_stream(), transfer.empty_pinned((4, 2))
    dst = np.empty((4, 2), np.float32)
    buf[:] = 1
    transfer.copy_async(dst, buf, stream)
    buf[:] = 2  # what a sink without the sync would do
    transfer.synchronize(stream)
    assert transfer.overwritten_in_flight == 1


def test_partial_last_batch_and_masks():
    blocks = batches([10, 10, 3], seed=1)
    masks = [np.arange(10) % 3 != 0, np.ones(10, bool), np.array([True, False, True])]
    transfer = DeferredTransfer()
    sink = DeviceSink(23, 8, batch_rows=10, transfer=transfer)
    assert [sink.put(b, m) for b, m in zip(blocks, masks)] == [6, 10, 2]
    out = sink.finish()
    np.testing.assert_array_equal(out, np.concatenate([b[m] for b, m in zip(blocks, masks)]))
    assert out.shape == (18, 8)
    assert [e[3] for e in transfer.events if e[0] == "copy"] == [6, 10, 2]


def test_blocks_larger_than_a_staging_buffer_are_split():
    blocks = batches([25, 4, 13], seed=2)
    keep = [np.ones(25, bool), np.ones(4, bool), np.arange(13) < 12]
    transfer = DeferredTransfer()
    sink = DeviceSink(42, 8, batch_rows=10, transfer=transfer)
    for b, m in zip(blocks, keep):
        sink.put(b, m)
    expected = np.concatenate([b[m] for b, m in zip(blocks, keep)])
    np.testing.assert_array_equal(sink.finish(), expected)
    assert all(p.shape == (10, 8) for p in transfer.pinned)  # host memory: 2 x batch rows
    assert transfer.overwritten_in_flight == 0


def test_a_block_with_no_usable_rows_starts_no_copy():
    transfer = DeferredTransfer()
    sink = DeviceSink(10, 8, batch_rows=10, transfer=transfer)
    assert sink.put(batches([5])[0], np.zeros(5, bool)) == 0
    assert sink.finish().shape == (0, 8) and transfer.events == []


def test_staging_is_never_larger_than_the_data():
    transfer = DeferredTransfer()
    DeviceSink(3, 8, batch_rows=10_000, transfer=transfer)
    assert [p.shape for p in transfer.pinned] == [(3, 8), (3, 8)]


def test_zero_rows():
    transfer = DeferredTransfer()
    sink = DeviceSink(0, 8, batch_rows=10, transfer=transfer)
    assert sink.finish().shape == (0, 8)


@pytest.mark.parametrize("sink_factory", [
    lambda: DeviceSink(5, 8, batch_rows=4, transfer=DeferredTransfer()),
    lambda: HostSink(5, 8),
])
def test_overflow_is_refused(sink_factory):
    sink = sink_factory()
    sink.put(batches([4])[0])
    with pytest.raises(ValueError, match=r"sink overflow: 4 \+ 4 rows > capacity 5"):
        sink.put(batches([4])[0])


def test_host_and_device_sinks_agree_on_loader_shaped_batches():
    """The loader's own decode/usable_rows output, through both sinks."""
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((57, 16)).astype("<f4")
    rows[[3, 20]] = 0.0
    rows[41, 5] = np.nan
    blobs = [r.tobytes() for r in rows]
    host, device = HostSink(57, 16), DeviceSink(57, 16, batch_rows=20, transfer=DeferredTransfer())
    for start in range(0, 57, 20):
        block = decode_blobs(blobs[start : start + 20], 16)
        keep, _ = usable_rows(block)
        assert host.put(block, keep) == device.put(block, keep)
    np.testing.assert_array_equal(host.finish(), device.finish())
    assert host.finish().shape == (54, 16)


def test_open_sink_on_the_cpu():
    assert isinstance(open_sink("cpu", 4, 2, 10), HostSink)
