"""
Iteration over task results: `Deferator`, producers and consumers.

A task that returns an iterator (other than a plain container) gives its
caller a `Deferator`, or, with ``consumer=...``, writes its items to that
IConsumer through an `IterationProducer`.
"""

from ._iteration import (
    Deferator,
    Delay,
    IterationProducer,
    ListConsumer,
    Prefetcherator,
    consumeInto,
    deferToDelay,
    isIterator,
    iteratorToProducer,
    threadDeferator,
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
