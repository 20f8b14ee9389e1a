"""Remote files: requests the layer sends (through the intproxy) and the agent's replies.

Files are opened by handle (an agent-side number per client, 0 = "already closed");
paths are absolute POSIX paths as text, names in listings and link targets are raw bytes
(file names need not be UTF-8). A failure is the usual `RequestFailed(kind="os", errno)`.

Imported inside the user's app by the layer: standard library and msgpack only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mirrord.protocol.messages import MAX_FRAME, Message

#: Largest chunk one FileRead returns or one FileWrite carries (well inside a frame).
MAX_FILE_CHUNK = MAX_FRAME // 2
#: A listing page stops growing past this many bytes of names (the rest: `more=True`).
MAX_LISTING_BYTES = MAX_FRAME // 2

#: `stat` fields on the wire, in this order (times in nanoseconds).
STAT_FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)

#: Kinds of directory entries (and of a symlink's target) in FileEntries.
KIND_OTHER = 0
KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
KIND_MISSING = 4  # a dangling symlink's target

#: One entry of a listing: (name, kind, kind of the target if a symlink else kind, inode).
DirEntry = tuple[bytes, int, int, int]


# ------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class FileOpen(Message):
    """open(path, flags, mode); the reply carries the first `read_ahead` bytes.

    When those bytes reach the end of a read-only file the agent closes it at once and
    the reply's handle is 0: a small file costs one round trip.
    """

    TAG: ClassVar[str] = "file_open"
    req: int
    path: str
    flags: int
    mode: int
    read_ahead: int


@dataclass(frozen=True, slots=True)
class FileRead(Message):
    """pread(handle, size, offset); `size` is capped at MAX_FILE_CHUNK."""

    TAG: ClassVar[str] = "file_read"
    req: int
    handle: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FileWrite(Message):
    TAG: ClassVar[str] = "file_write"
    req: int
    handle: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FileTruncate(Message):
    TAG: ClassVar[str] = "file_truncate"
    req: int
    handle: int
    size: int


@dataclass(frozen=True, slots=True)
class FileClose(Message):
    TAG: ClassVar[str] = "file_close"
    req: int
    handle: int


@dataclass(frozen=True, slots=True)
class FileFstat(Message):
    TAG: ClassVar[str] = "file_fstat"
    req: int
    handle: int


@dataclass(frozen=True, slots=True)
class FileStat(Message):
    """stat (follow_symlinks) or lstat of a path."""

    TAG: ClassVar[str] = "file_stat"
    req: int
    path: str
    follow_symlinks: bool


@dataclass(frozen=True, slots=True)
class FileAccess(Message):
    TAG: ClassVar[str] = "file_access"
    req: int
    path: str
    mode: int


@dataclass(frozen=True, slots=True)
class FileListDir(Message):
    """The entries of a directory from index `start` on (one page of a listing)."""

    TAG: ClassVar[str] = "file_listdir"
    req: int
    path: str
    start: int


@dataclass(frozen=True, slots=True)
class FileReadlink(Message):
    TAG: ClassVar[str] = "file_readlink"
    req: int
    path: str


@dataclass(frozen=True, slots=True)
class FileUnlink(Message):
    TAG: ClassVar[str] = "file_unlink"
    req: int
    path: str


@dataclass(frozen=True, slots=True)
class FileMkdir(Message):
    TAG: ClassVar[str] = "file_mkdir"
    req: int
    path: str
    mode: int


@dataclass(frozen=True, slots=True)
class FileRmdir(Message):
    TAG: ClassVar[str] = "file_rmdir"
    req: int
    path: str


@dataclass(frozen=True, slots=True)
class FileRename(Message):
    TAG: ClassVar[str] = "file_rename"
    req: int
    src: str
    dst: str


# -------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class FileOpened(Message):
    TAG: ClassVar[str] = "file_opened"
    req: int
    handle: int
    stat: list[int]
    data: bytes
    eof: bool


@dataclass(frozen=True, slots=True)
class FileData(Message):
    """Bytes read at the requested offset; `eof`: nothing follows them."""

    TAG: ClassVar[str] = "file_data"
    req: int
    data: bytes
    eof: bool


@dataclass(frozen=True, slots=True)
class FileWritten(Message):
    TAG: ClassVar[str] = "file_written"
    req: int
    size: int


@dataclass(frozen=True, slots=True)
class FileStatResult(Message):
    TAG: ClassVar[str] = "file_stat_result"
    req: int
    stat: list[int]


@dataclass(frozen=True, slots=True)
class FileEntries(Message):
    TAG: ClassVar[str] = "file_entries"
    req: int
    entries: list[DirEntry]
    more: bool


@dataclass(frozen=True, slots=True)
class FileLink(Message):
    TAG: ClassVar[str] = "file_link"
    req: int
    target: bytes


@dataclass(frozen=True, slots=True)
class FileDone(Message):
    """Success of a request that returns nothing (close, access, unlink, mkdir...)."""

    TAG: ClassVar[str] = "file_done"
    req: int
