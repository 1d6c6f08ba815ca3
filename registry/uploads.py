"""An upload handler that streams model files to disk, hashing them on the way.

The whole file never sits in memory, its sha256 costs no second read, and a body over
MODEL_UPLOAD_MAX_BYTES is refused with 413 — from Content-Length before anything is
read when the client sends one, otherwise as soon as the count passes the limit.
"""

from __future__ import annotations

import errno
import hashlib
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from core.errors import InsufficientStorage, PayloadTooLarge, ServiceUnavailable

# Room for the multipart framing and the small form fields beside the file.
FORM_OVERHEAD_BYTES = 1024 * 1024


def too_large_message(limit: int) -> str:
    return f"The upload is larger than the limit of {limit / 1024**2:.0f} MiB (MODEL_UPLOAD_MAX_BYTES)."


def _spool_error(exc: OSError) -> InsufficientStorage | ServiceUnavailable:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage(
            f"The server's temporary upload space is full ({exc.strerror}); nothing was kept. Retry later."
        )
    return ServiceUnavailable(f"The server could not spool the upload ({exc.strerror}); nothing was kept.")


class ModelUploadHandler(TemporaryFileUploadHandler):
    """Temporary-file upload that records `sha256` on the file and enforces the size limit."""

    def handle_raw_input(
        self, input_data: Any, META: dict[str, Any], content_length: int, boundary: Any, encoding: str | None = None
    ) -> None:
        limit = settings.MODEL_UPLOAD_MAX_BYTES
        if content_length and content_length > limit + FORM_OVERHEAD_BYTES:
            raise PayloadTooLarge(too_large_message(limit))
        return None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self._received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._received += len(raw_data)
        if self._received > settings.MODEL_UPLOAD_MAX_BYTES:
            self.file.close()
            raise PayloadTooLarge(too_large_message(settings.MODEL_UPLOAD_MAX_BYTES))
        self._digest.update(raw_data)
        try:
            return super().receive_data_chunk(raw_data, start)
        except OSError as exc:
            # The temporary file is deleted when closed: no partial bytes stay behind.
            self.file.close()
            raise _spool_error(exc) from exc

    def file_complete(self, file_size: int) -> TemporaryUploadedFile | None:
        uploaded = super().file_complete(file_size)
        if uploaded is not None:
            uploaded.sha256 = self._digest.hexdigest()  # type: ignore[attr-defined]
        return uploaded  # type: ignore[return-value]
