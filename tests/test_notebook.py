"""The IPython extension (`%load_ext mirrord`, `%mirrord`, `mirrord.live`): the sample
notebook executed headless by a real kernel against the lab, and the magics in a shell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import requests
from helpers import REPO
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from nbclient import NotebookClient

import mirrord
from mirrord.api import notebook
from mirrord.lab import Lab

NOTEBOOK = REPO / "examples" / "live_traffic.ipynb"
PATHS = ("/catalog?page=1", "/cart", "/checkout", "/health")


def execute_sample(lab: Lab, out: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run the sample notebook in a fresh kernel (this machine's python3 kernel) and save it."""
    monkeypatch.setenv("MIRRORD_TARGET", f"netns/{lab.staging_ns}")
    monkeypatch.setenv("STAGING_URL", lab.service_url)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute()
    nbformat.write(nb, out)
    return nbformat.read(out, as_version=4)


def outputs(cell: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "") + "\n".join(map(str, output.get("data", {}).values()))
        for output in cell.get("outputs", [])
    )


def test_sample_notebook_shows_the_mirrored_requests(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = execute_sample(lab, tmp_path / "executed.ipynb", monkeypatch)
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    by_source = {cell.source: outputs(cell) for cell in code}
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]

    assert f"netns/{lab.staging_ns}" in by_source["%mirrord connect $target"]
    table, frame = by_source["live"], by_source["live.df"]
    for path in PATHS:  # in the table shown again, and in the DataFrame
        assert path in table and path in frame
    assert "4 requests" in table and lab.host_addr in table and "POST" in frame
    assert "4 requests, live" in by_source["%mirrord status"]
    # the widget's last state is saved too: the table as it stood when capture stopped
    state = saved.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [model["state"].get("value", "") for model in state.values()]
    assert any(all(path in value for path in PATHS) and "stopped" in value for value in values)


def completions(shell: InteractiveShell, line: str) -> list[str]:
    """What pressing Tab at the end of `line` offers, as whole lines."""
    with provisionalcompleter():
        found = shell.Completer.completions(line, len(line))
        return [line[: c.start] + c.text for c in found if c.type != "keyword"]


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "mirrord")
    try:
        yield ip
    finally:
        notebook.disconnect()
        InteractiveShell.clear_instance()


def test_magics_connect_live_and_complete(
    lab: Lab, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    session = shell.run_line_magic("mirrord", f"connect netns/{lab.staging_ns}")
    assert session is notebook.current() and shell.user_ns["mirrord"] is mirrord
    live = mirrord.live(8080, show=2)  # no kernel here: rich HTML, fresh at each display
    requests.post(f"{lab.service_url}/one", data=b"12345", timeout=10)
    requests.get(f"{lab.service_url}/two", timeout=10)
    requests.get(f"{lab.service_url}/three", timeout=10)
    assert live.wait(3, timeout=10)
    html = live._repr_html_()
    assert "/three" in html and "/two" in html and "/one" not in html  # the newest `show`
    assert "3 requests" in html and lab.host_addr in html
    frame = live.df
    assert list(frame["path"]) == ["/one", "/two", "/three"]
    assert list(frame["size"]) == [5, 0, 0] and list(frame["method"]) == ["POST", "GET", "GET"]
    shell.run_line_magic("mirrord", "status")
    assert "3 requests, live" in capsys.readouterr().out

    line = f"%mirrord connect netns/{lab.staging_ns[:-2]}"
    assert f"%mirrord connect netns/{lab.staging_ns}" in completions(shell, line)
    assert completions(shell, "%mirrord dis") == ["%mirrord disconnect"]

    shell.run_line_magic("mirrord", "disconnect")
    assert not live.running and "stopped" in live._repr_html_()
    with pytest.raises(mirrord.MirrordError, match="%mirrord connect"):
        mirrord.live(8080)


def test_magic_errors_are_one_line(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError) as missing:
        shell.run_line_magic("mirrord", "connect netns/no-such-namespace")
    assert str(missing.value).startswith("mirrord: target netns/no-such-namespace")
    assert "\n" not in str(missing.value)
    with pytest.raises(UsageError, match="usage: %mirrord connect"):
        shell.run_line_magic("mirrord", "frobnicate")
    with pytest.raises(UsageError, match="dotted.key=value"):
        shell.run_line_magic("mirrord", "connect targetless nonsense")
    shell.run_line_magic("mirrord", "connect targetless feature.env=false")
    assert notebook.current().config.env.enabled is False
    assert completions(shell, "%mirrord connect tar") == ["%mirrord connect targetless"]


def test_live_rows_keep_the_order_requests_came_in() -> None:
    """Mirrored connections are read concurrently: a request may be published after a
    later one. The table still lists them as they came; full, it drops the oldest."""
    from collections import deque
    from datetime import UTC, datetime, timedelta

    from mirrord.api.live import _place
    from mirrord.api.mirror import MirroredRequest

    start = datetime.now(UTC)

    def request(path: str, second: int) -> MirroredRequest:
        raw = f"GET {path} HTTP/1.1\r\n\r\n".encode()
        came = start + timedelta(seconds=second)
        return MirroredRequest("GET", path, {}, b"", ("198.18.0.9", 5000), came, "1.1", raw)

    rows: deque[MirroredRequest] = deque(maxlen=3)
    for path, second in (("/two", 2), ("/three", 3), ("/one", 1), ("/four", 4), ("/zero", 0)):
        _place(rows, request(path, second))
    assert [r.path for r in rows] == ["/two", "/three", "/four"]
