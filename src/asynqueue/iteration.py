"""
Iteration over task results: `Deferator`, producers and consumers.

A task that returns an iterator (other than a plain container) gives its
caller a `Deferator`, or, with ``consumer=...``, writes its items to that
IConsumer through an `IterationProducer`.
"""

from ._iter._base import isIterator
from ._iter._deferator import Deferator, Delay, deferToDelay, threadDeferator
from ._iter._prefetch import Prefetcherator
from ._iter._producers import (
    IterationProducer,
    ListConsumer,
    consumeInto,
    iteratorToProducer,
)

__all__ = [
    "Deferator",
    "Delay",
    "IterationProducer",
    "ListConsumer",
    "Prefetcherator",
    "consumeInto",
    "deferToDelay",
    "isIterator",
    "iteratorToProducer",
    "threadDeferator",
]
