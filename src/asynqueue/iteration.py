"""
Iteration over task results: `Deferator`, producers and consumers.

A task that returns an iterator (other than a plain container) gives its
caller a `Deferator`, or, with ``consumer=...``, writes its items to that
IConsumer through an `IterationProducer`.
"""

from ._iter._deferator import Deferator, Delay, deferToDelay, isIterator, threadDeferator
from ._iter._producers import (
    IterationProducer,
    ListConsumer,
    Prefetcherator,
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
