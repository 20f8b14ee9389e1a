"""A table of the requests mirrored from a port of the target, filled as they arrive.

In a Jupyter kernel with ipywidgets the table is a widget that a background thread
updates in place, so the kernel stays free for other cells; without ipywidgets it is
rich HTML that shows what was captured so far each time it is displayed. Both carry
the same HTML, so a saved notebook (nbconvert, GitHub) shows the table as it was.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mirrord.api.mirror import DEFAULT_BUFFER, MirroredRequest
from mirrord.errors import MirrordError

if TYPE_CHECKING:
    import pandas

    from mirrord.api.session import Session

COLUMNS = ("time", "client", "method", "path", "status", "size")
_STYLE = (
    "border-collapse:collapse;font-family:ui-monospace,monospace;font-size:12px;text-align:left"
)
_CELL = "padding:2px 10px;border-bottom:1px solid #ddd;text-align:left"


class Live:
    """`mirrord.live(port)`: display it, read `.df` or `.requests`, `.stop()` it."""

    def __init__(
        self,
        session: Session,
        port: int,
        *,
        http_filter: Mapping[str, Any] | None = None,
        show: int = 20,
        keep: int = DEFAULT_BUFFER,
        refresh: float = 0.25,
    ) -> None:
        self.port = port
        self.target = session.target
        self.show = show
        self.refresh = refresh
        self._mirror = session.mirror(port, http_filter=http_filter, buffer=keep)
        self._rows: deque[MirroredRequest] = deque(maxlen=keep)
        self._arrived = threading.Condition()
        self._widget = _widget()
        self._thread = threading.Thread(target=self._follow, name=f"live :{port}", daemon=True)
        self._thread.start()

    # ---- what was captured

    @property
    def requests(self) -> list[MirroredRequest]:
        with self._arrived:
            return list(self._rows)

    @property
    def running(self) -> bool:
        return not self._mirror.closed

    @property
    def dropped(self) -> int:
        return self._mirror.dropped

    def rows(self) -> list[dict[str, Any]]:
        """One dict per request, keyed by COLUMNS (status: the target's answer when known;
        a mirror sees only what clients send, so it is None here)."""
        return [_row(request) for request in self.requests]

    @property
    def df(self) -> pandas.DataFrame:
        try:
            import pandas
        except ImportError:
            raise MirrordError("live.df needs pandas: pip install 'mirrord-py[notebook]'") from None
        return pandas.DataFrame(self.rows(), columns=list(COLUMNS))

    def wait(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until `count` requests were captured in all; False after `timeout`."""
        with self._arrived:
            return (
                self._arrived.wait_for(
                    lambda: len(self._rows) >= count or not self.running, timeout
                )
                and len(self._rows) >= count
            )

    def stop(self) -> None:
        """Stop capturing; the table keeps what it has."""
        self._mirror.close()
        self._thread.join(5)

    # ---- following the mirror

    def _follow(self) -> None:
        drawn = 0.0
        dirty = False
        while True:
            request = self._mirror.next_request(timeout=self.refresh)
            if request is not None:
                with self._arrived:
                    _place(self._rows, request)
                    self._arrived.notify_all()
                dirty = True
            elif self._mirror.closed:
                break
            if dirty and time.monotonic() - drawn >= self.refresh:
                self._redraw()
                drawn, dirty = time.monotonic(), False
        self._redraw()
        with self._arrived:
            self._arrived.notify_all()

    def _redraw(self) -> None:
        if self._widget is not None:
            self._widget.value = self._repr_html_()

    # ---- display

    def __repr__(self) -> str:
        state = "live" if self.running else "stopped"
        return f"<mirrord.live {self.target} :{self.port}: {len(self._rows)} requests, {state}>"

    def _repr_html_(self) -> str:
        shown = list(reversed(self.requests))[: self.show]  # the newest on top
        head = "".join(f'<th style="{_CELL}">{name}</th>' for name in COLUMNS)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td style="{_CELL}">{html.escape(_text(value))}</td>' for value in row.values()
            )
            + "</tr>"
            for row in map(_row, shown)
        )
        state = "live" if self.running else "stopped"
        dropped = f", {self.dropped} dropped" if self.dropped else ""
        caption = (
            f"mirrord · {html.escape(self.target)} :{self.port} · "
            f"{len(self._rows)} requests{dropped} · {state}"
        )
        return (
            f'<table class="mirrord-live" style="{_STYLE}">'
            f'<caption style="text-align:left;font-weight:bold">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": self._repr_html_()}
        if self._widget is not None:
            self._redraw()
            view = self._widget._repr_mimebundle_()
            bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        display(bundle, raw=True)


def _place(rows: deque[MirroredRequest], request: MirroredRequest) -> None:
    """Into `rows` in the order the requests came: connections are read concurrently, so
    one may be published after a later one. Full, the oldest goes."""
    at = len(rows)
    while at and rows[at - 1].time > request.time:
        at -= 1
    if len(rows) == rows.maxlen:
        if at == 0:
            return  # older than all it keeps
        rows.popleft()
        at -= 1
    rows.insert(at, request)


def _row(request: MirroredRequest) -> dict[str, Any]:
    return {
        "time": request.time,
        "client": f"{request.client[0]}:{request.client[1]}",
        "method": request.method,
        "path": request.target,
        "status": None,
        "size": len(request.body),
    }


def _text(value: Any) -> str:
    if value is None:
        return "·"
    if hasattr(value, "astimezone"):
        return value.astimezone().strftime("%H:%M:%S.%f")[:-3]
    return str(value)


def _widget() -> Any:
    """An HTML widget when running in a Jupyter kernel with ipywidgets, else None."""
    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is None:
            return None
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets.HTML()
