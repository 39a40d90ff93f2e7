"""Files that fail the way real disks do."""

from __future__ import annotations

import errno
import os
from typing import BinaryIO


class FullDisk:
    """A file open for writing on a disk with ``room`` bytes left: the write that needs more fails with ENOSPC, as do
    all later ones (what a real full disk does: the bytes that fit are written).

    Args:
        file: The real file underneath.
        room: Bytes that still fit.
    """

    def __init__(self, file: BinaryIO, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
