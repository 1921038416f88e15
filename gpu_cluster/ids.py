"""Ids in panic-tda's storage forms: uuid7 (its layout) as 32 hex digits, dashed in JSON."""

from __future__ import annotations

import os
import time
import uuid


class Uuid7:
    """uuid7 ids in panic-tda's layout (uuid-v7 1.0.0), monotonic within a process.

    Bits 127-92: unix seconds; 91-80: ns fraction >> 18; 79-76: version 7;
    75-64: (fraction >> 6) & 0xfff; 63-62: variant 0b10; 61-56: fraction & 0x3f;
    55-0: random. The first nine hex digits are therefore the unix time in seconds.
    """

    def __init__(self, clock=time.time_ns, random_bytes=os.urandom):
        self._clock, self._random = clock, random_bytes
        self._last = 0

    def next_ns(self) -> int:
        now = max(self._clock(), self._last + 1)
        self._last = now
        return now

    def hex(self) -> str:
        seconds, frac = divmod(self.next_ns(), 1_000_000_000)
        value = (seconds & (2**36 - 1)) << 92
        value |= (frac >> 18) << 80
        value |= 0x7 << 76
        value |= ((frac >> 6) & 0xFFF) << 64
        value |= 0b10 << 62
        value |= (frac & 0x3F) << 56
        value |= int.from_bytes(self._random(7), "big")
        return f"{value:032x}"


new_ids = Uuid7()


def dashed(hex32: str | bytes) -> str:
    """``str(UUID)`` form of a 32-hex id (the form panic-tda puts inside JSON)."""
    text = hex32.decode() if isinstance(hex32, bytes) else hex32
    return str(uuid.UUID(hex=text))


