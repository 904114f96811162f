"""Describing calls for logs and debugging: `Info`, `showResult`, `whichThread`, `hashIt`."""

from ._support._info import Info, InfoHolder, hashIt, showResult, whichThread

__all__ = ["Info", "InfoHolder", "hashIt", "showResult", "whichThread"]
