"""The flat gradient buffer cut into buckets of whole layers, summed over the ranks
while backward is still running.

Backward writes the last layer's gradients first, and a model's flat buffer holds the
layers in order, so the buffer fills from its end. A bucket is a run of consecutive
layers (never a split layer) of at least ``bucket_bytes``, planned from the last layer
down: as soon as backward has finished the lowest layer of a bucket
(``Sequential.backward_batch``'s ``on_gradients``), the bucket is scaled by this rank's
weight and its all-reduce starts; :meth:`GradientBuckets.finish` waits for all of them
before the optimizer's update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .transport import PendingSum, Transport

if TYPE_CHECKING:
    from ..model import Sequential


@dataclass(frozen=True)
class Bucket:
    """Elements ``start:end`` of the flat gradient buffer, complete once the backward
    of layer ``ready_after`` (its lowest layer) has run."""

    ready_after: int
    start: int
    end: int


def layer_ranges(model: Sequential) -> list[tuple[int, int]]:
    """``(start, end)`` of each layer's parameters in the model's flat buffers, in layer
    order (``start == end`` for a layer without parameters)."""
    ranges = []
    offset = 0
    for layer in model.layers:
        size = sum(math.prod(shape) for _, shape in layer.param_shapes())
        ranges.append((offset, offset + size))
        offset += size
    return ranges


def plan_buckets(ranges: list[tuple[int, int]], itemsize: int, bucket_bytes: int) -> list[Bucket]:
    """Buckets of whole layers from the last layer down, each closed when it holds at
    least ``bucket_bytes`` (the first layers' bucket may hold less); buckets without
    elements are left out. Together they cover every parameter once."""
    buckets: list[Bucket] = []
    end: int | None = None
    for index in range(len(ranges) - 1, -1, -1):
        start, stop = ranges[index]
        if end is None:
            end = stop
        if (end - start) * itemsize >= bucket_bytes or index == 0:
            if end > start:
                buckets.append(Bucket(index, start, end))
            end = None
    return buckets


class GradientBuckets:
    """The buckets of one model's flat gradient buffer and the sums in flight.

    Use: :meth:`begin` with this rank's weight, pass :meth:`layer_done` to backward as
    ``on_gradients``, then :meth:`finish`. Each bucket is multiplied by the weight and
    summed over the ranks in place: g ← Σ_r w_r g_r.
    """

    def __init__(self, model: Sequential, transport: Transport, bucket_bytes: int) -> None:
        self.model = model
        self.transport = transport
        self.buckets = plan_buckets(layer_ranges(model), model.dtype.itemsize, bucket_bytes)
        self._by_layer = {bucket.ready_after: bucket for bucket in self.buckets}
        self._weight = 1.0
        self._pending: list[PendingSum] = []

    def begin(self, weight: float) -> None:
        """A new step whose gradients count with ``weight`` (this rank's share)."""
        if self._pending:
            raise RuntimeError("GradientBuckets.begin: the last step's sums were not finished")
        self._weight = float(weight)

    def layer_done(self, index: int) -> None:
        """Backward has written layer ``index``'s gradients: start its bucket if it is
        complete now; let the sums in flight progress."""
        bucket = self._by_layer.get(index)
        if bucket is not None:
            self._start(bucket)
        elif self._pending:
            self.transport.progress(self._pending)

    def start_all(self) -> None:
        """Start every bucket (the gradients are all written: after backward, or zeros
        on a rank without rows in this batch)."""
        for bucket in self.buckets:
            self._start(bucket)

    def _start(self, bucket: Bucket) -> None:
        view = self.model.flat_grads[bucket.start : bucket.end]
        if self._weight != 1.0:
            view *= self._weight
        self._pending.append(self.transport.start_sum(view))

    def finish(self) -> None:
        """Wait for every started sum (all buckets must have started)."""
        if len(self._pending) != len(self.buckets):
            raise RuntimeError(
                f"GradientBuckets.finish: {len(self._pending)} of {len(self.buckets)} "
                "buckets started; backward did not report every layer"
            )
        pending, self._pending = self._pending, []
        self.transport.finish(pending)


__all__ = ["Bucket", "GradientBuckets", "layer_ranges", "plan_buckets"]
