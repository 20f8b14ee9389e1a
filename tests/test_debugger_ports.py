"""Debugger ports as mirrord reads them: MIRRORD_IGNORE_DEBUGGER_PORTS and the command
lines of debugpy and pydevd (the Python debuggers of VS Code and PyCharm)."""

from __future__ import annotations

import pytest

from mirrord.settings.debugger import (
    IGNORE_ENV,
    DebuggerPorts,
    detect,
    from_process,
    is_debugger_helper,
)


@pytest.mark.parametrize(
    ("text", "ports", "not_ports"),
    [
        ("5678", [5678], [5677, 5679]),
        ("5678,5690", [5678, 5690], [5679]),
        ("50000-50010", [50000, 50005, 50010], [49999, 50011]),
        ("1-2,x,9-8,70000,3", [1, 2, 3], [8, 9]),  # entries that do not parse are skipped
        ("", [], [5678]),
    ],
)
def test_the_variable_syntax(text: str, ports: list[int], not_ports: list[int]) -> None:
    parsed = DebuggerPorts.parse(text)
    assert all(parsed.keeps_local("127.0.0.1", p) for p in ports)
    assert not any(parsed.keeps_local("127.0.0.1", p) for p in not_ports)


def test_only_this_machines_addresses_are_a_debuggers() -> None:
    ports = DebuggerPorts.parse("5678")
    assert ports.keeps_local("::1", 5678) and ports.keeps_local("0.0.0.0", 5678)
    assert not ports.keeps_local("198.18.0.9", 5678)


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["python3", "-m", "debugpy", "--listen", "5678", "app.py"], [5678]),
        (["python3", "-m", "debugpy", "--listen", "127.0.0.1:5679", "app.py"], [5679]),
        (["python", "-m", "debugpy", "--listen", "198.18.0.2:5678", "app.py"], []),
        # VS Code's launcher, old and new argument layouts
        (["/usr/bin/python", "/ext/debugpy", "--connect", "127.0.0.1:57141", "x.py"], [57141]),
        (
            ["/usr/bin/python", "-X", "frozen_modules=off", "/ext/debugpy"]
            + ["--connect", "127.0.0.1:57141", "--adapter-access-token", "t", "x.py"],
            [57141],
        ),
        # PyCharm
        (
            ["/usr/bin/python3", "/opt/pycharm/plugins/pydevd.py", "--multiprocess"]
            + ["--client", "127.0.0.1", "--port", "32845", "--file", "x.py"],
            [32845],
        ),
        (["python3", "app.py", "--listen", "5678"], []),  # an app's own option, not debugpy's
    ],
)
def test_detected_from_the_command_line(argv: list[str], found: list[int]) -> None:
    assert detect(argv, {}) == found


def test_children_inherit_what_was_detected() -> None:
    env = {IGNORE_ENV: "9000"}
    ports = from_process(["python3", "-m", "debugpy", "--listen", "5678", "app.py"], env)
    assert ports.keeps_local("127.0.0.1", 5678) and ports.keeps_local("127.0.0.1", 9000)
    assert DebuggerPorts.parse(env[IGNORE_ENV]) == ports


def test_the_debug_adapter_is_the_developers_own_process() -> None:
    assert is_debugger_helper(["python3", "/site-packages/debugpy/adapter", "--for-server", "1"])
    assert not is_debugger_helper(["python3", "-m", "debugpy", "--listen", "5678", "app.py"])
