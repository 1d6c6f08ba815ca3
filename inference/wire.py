"""What crosses Redis between the prediction gateway and the workers: msgpack, never pickle.

A request message carries one coalesced batch for one model version; tensors travel as
(datatype, shape, raw little-endian bytes). The worker answers on the reply list named
in the message, one reply per message.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from django.conf import settings

from core.datatypes import NUMPY_DTYPES, datatype_of_array

QUEUE_PREFIX = "maas:serve:"
REPLY_PREFIX = "maas:reply:"
WORKERS_KEY = "maas:workers"
INVALIDATE_CHANNEL = "maas:invalidate"
# A reply nobody collects (its gateway died) disappears after this many seconds.
REPLY_TTL_SECONDS = 120

Tensors = dict[str, np.ndarray]


def queue_key(queue: str) -> str:
    return f"{QUEUE_PREFIX}{queue}"


def redis_url() -> str:
    """The Redis that carries online predictions (the broker's, unless configured apart)."""
    url = settings.INFERENCE_REDIS_URL
    # kombu spells unix sockets redis+socket://; redis-py spells them unix://.
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+socket://") else url


def pack_tensors(tensors: Tensors) -> dict[str, list[Any]]:
    """Arrays as [datatype, shape, little-endian bytes]."""
    packed = {}
    for name, array in tensors.items():
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        packed[name] = [datatype_of_array(array), list(array.shape), little.tobytes()]
    return packed


def unpack_tensors(packed: dict[str, list[Any]]) -> Tensors:
    tensors = {}
    for name, (datatype, shape, raw) in packed.items():
        dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
        # bytearray: a writable buffer, so torch.from_numpy can share it without a warning.
        array = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
        tensors[name] = array.astype(NUMPY_DTYPES[datatype], copy=False)
    return tensors


def rows(tensors: Tensors) -> int:
    """Rows in a request: the first dimension of its first input (1 for a scalar)."""
    first = next(iter(tensors.values()))
    return int(first.shape[0]) if first.ndim else 1


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(raw: bytes) -> dict[str, Any]:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)
