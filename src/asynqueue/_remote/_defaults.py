"""Defaults of the worker server that the command line shows without importing the server."""

#: Where ``asynqueue serve`` listens by default.
DEFAULT_DESCRIPTION = "tcp:7341:interface=127.0.0.1"
