"""A module that takes half a second to import (a child imports it on first use)."""

from __future__ import annotations

import time

time.sleep(0.5)


def ident(value: object) -> object:
    return value
