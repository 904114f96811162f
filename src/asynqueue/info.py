"""Describing calls for logs and debugging: `Info`, `showResult`, `whichThread`."""

from ._support._info import Info, InfoHolder, showResult, whichThread

__all__ = ["Info", "InfoHolder", "showResult", "whichThread"]
