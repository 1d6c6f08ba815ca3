"""What a long-lived server process does once its start-up is done."""

from __future__ import annotations

import gc


def startup_objects_frozen() -> None:
    """Keep what start-up made (Django, the apps, torch, numpy: ~260k objects in a web process)
    out of the garbage collector's full collections.

    Those objects live as long as the process, and every full collection walked them all: ~0.2 s
    in a web process on the 2-core machine, a stall of its event loop that each request arriving
    meanwhile waited out (the slowest 503s of an overload were those). Frozen, a full collection
    took 3-17 ms there. Objects made later (caches, requests) are collected as before.
    """
    gc.freeze()
