"""`mirrord.AsyncSession`: the Session for async code, with anyio.

    async with mirrord.AsyncSession(target="netns/staging") as s:
        await s.get("http://inventory:8080/items")
        stream = await s.connect(("inventory", 8080))      # an anyio SocketStream
        async for request in s.mirror(8080).http():
            ...

One implementation, two faces: every call runs the synchronous `Session`'s in a worker
thread (`anyio.to_thread`), so the two cannot drift apart and the event loop never
waits on the intproxy. Waiting for mirrored traffic happens in a thread that only
watches the backlog, so a cancelled `async for` loses no request.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.abc

from mirrord.api.mirror import Chunk, Mirror, MirroredRequest
from mirrord.api.session import Activation, Session
from mirrord.api.steal import Steal

P = ParamSpec("P")
T = TypeVar("T")


def _in_thread(
    method: Callable[Concatenate[Session, P], T],
) -> Callable[Concatenate[AsyncSession, P], Coroutine[Any, Any, T]]:
    """The async face of a Session method: the same call, in a worker thread."""

    @functools.wraps(method)
    async def call(self: AsyncSession, *args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(functools.partial(method, self.sync, *args, **kwargs))

    return call


class AsyncSession:
    def __init__(
        self,
        target: str | None = None,
        *,
        config: str | Path | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """The same arguments as `Session`."""
        self.sync = Session(target, config=config, **options)

    @property
    def target(self) -> str:
        return self.sync.target

    def __repr__(self) -> str:
        return repr(self.sync).replace("mirrord.Session", "mirrord.AsyncSession", 1)

    async def start(self) -> AsyncSession:
        await anyio.to_thread.run_sync(self.sync.start)
        return self

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled task still cleans up
            await anyio.to_thread.run_sync(self.sync.close)

    async def __aenter__(self) -> AsyncSession:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def env(self) -> dict[str, str]:
        """As Session.env (read once when the session starts: no waiting here)."""
        return self.sync.env

    run = _in_thread(Session.run)
    read_bytes = _in_thread(Session.read_bytes)
    read_text = _in_thread(Session.read_text)
    listdir = _in_thread(Session.listdir)
    stat = _in_thread(Session.stat)
    exists = _in_thread(Session.exists)
    resolve = _in_thread(Session.resolve)
    request = _in_thread(Session.request)
    get = _in_thread(Session.get)
    post = _in_thread(Session.post)
    put = _in_thread(Session.put)
    patch = _in_thread(Session.patch)
    delete = _in_thread(Session.delete)
    head = _in_thread(Session.head)

    async def connect(
        self, address: tuple[str, int], timeout: float | None = None
    ) -> anyio.abc.SocketStream:
        """An anyio SocketStream whose connection leaves from the target."""
        sock = await anyio.to_thread.run_sync(self.sync.connect, address, timeout)
        return await anyio.abc.SocketStream.from_socket(sock)

    def mirror(self, port: int, **options: Any) -> AsyncMirror:
        """As Session.mirror; subscribes when first used (`async with` or `async for`)."""
        return AsyncMirror(functools.partial(self.sync.mirror, port, **options))

    def steal(self, port: int, **options: Any) -> AsyncSteal:
        """As Session.steal, as an async context manager."""
        return AsyncSteal(functools.partial(self.sync.steal, port, **options))

    def activate(self, *, env: bool = False) -> Activation:
        """As Session.activate (it only patches: nothing to wait for)."""
        return self.sync.activate(env=env)


class AsyncMirror:
    def __init__(self, open_mirror: Callable[[], Mirror]) -> None:
        self._open = open_mirror
        self._mirror: Mirror | None = None

    async def _ready(self) -> Mirror:
        if self._mirror is None:
            self._mirror = await anyio.to_thread.run_sync(self._open)
        return self._mirror

    @property
    def dropped(self) -> int:
        return self._mirror.dropped if self._mirror is not None else 0

    def http(self) -> AsyncIterator[MirroredRequest]:
        return self._items(Mirror.next_request)

    def raw(self) -> AsyncIterator[Chunk]:
        return self._items(Mirror.next_chunk)

    def __aiter__(self) -> AsyncIterator[MirroredRequest]:
        return self.http()

    async def _items(self, take: Callable[[Mirror, float], T | None]) -> AsyncIterator[T]:
        mirror = await self._ready()
        while True:
            item = take(mirror, 0)  # only what is there already: the loop never blocks
            if item is not None:
                yield item
            elif mirror.closed:
                return
            elif not await anyio.to_thread.run_sync(
                mirror.wait, mirror.timeout, abandon_on_cancel=True
            ):
                return  # `timeout` seconds without anything new

    async def aclose(self) -> None:
        if self._mirror is not None:
            await anyio.to_thread.run_sync(self._mirror.close)

    async def __aenter__(self) -> AsyncMirror:
        await self._ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


class AsyncSteal:
    def __init__(self, open_steal: Callable[[], Steal]) -> None:
        self._open = open_steal
        self.steal: Steal | None = None

    async def __aenter__(self) -> Steal:
        self.steal = await anyio.to_thread.run_sync(self._open)
        return self.steal

    async def __aexit__(self, *exc: object) -> None:
        if self.steal is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.steal.close)
