"""Remote files: the app opens, stats and lists the target's files, by mirrord's fs policy.

`fs_filter.FsPolicy` decides per path (`routing`): local (the real call runs), remote (the
agent does it in the target's mount namespace) or not found. `remote.RemoteFs` is the one
client of the file requests; the wrappers (`opening`, `paths`, `sqlite`) and the file
objects the app holds (`objects`) use it. A remote file opened for reading becomes a real
descriptor (`memfd_create`) that C code can use too; large files opened with `open()` are
streamed and only copied into a memfd when something asks for `fileno()`. Files opened for
writing live in a memfd and are written back to the target on close.

Runs inside the user's app: standard library, wrapt and msgpack only.
"""

from mirrord.layer.files.patches import FilePatches

__all__ = ["FilePatches"]
