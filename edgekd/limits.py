"""The range a measured latency must lie in, wherever one is read (reports, device results, measurement files).

Its own module so that readers in every layer (edgekd.report, edgekd.bench, edgekd.hardware) check
with one definition without importing each other.
"""

from __future__ import annotations

import math

# The longest latency edgekd accepts: a day per call. Beyond it a figure is a corrupt or edited file, not
# a timing (and 1e308 ms overflows the plots' axis limits).
MAX_LATENCY_MS = 86_400_000.0


def is_number(v) -> bool:
    """A finite int or float (bool excluded, though Python counts it as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_latency_ms(v, zero: bool = True) -> bool:
    """A latency in ms: a finite number, >= 0 (> 0 unless ``zero``), at most MAX_LATENCY_MS."""
    return is_number(v) and (v >= 0 if zero else v > 0) and v <= MAX_LATENCY_MS
