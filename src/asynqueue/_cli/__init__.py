"""The ``asynqueue`` command line: ``map``, ``info`` and ``serve`` (see ARCHITECTURE.md)."""
