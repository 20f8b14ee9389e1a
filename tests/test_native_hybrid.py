"""Python apps whose traffic is made in C: libpq (psycopg2), uvloop under uvicorn, a curl
started with subprocess. The relay handles every socket of the process, the Python
layer keeps the files, and nothing is handled twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from helpers import last_json, run_app
from test_incoming import SERVERS, App, nat_rules, wait_for

from mirrord.lab import Lab


@pytest.fixture(scope="module")
def lab(module_lab: Lab) -> Lab:
    """One lab for the module: every test leaves it as it found it (the steal test
    checks that its rules are gone)."""
    return module_lab


# uvicorn on uvloop; each answer also says which loop served it
UVLOOP_SERVER = (
    SERVERS["uvicorn"]
    .replace('loop="asyncio"', 'loop="uvloop"')
    .replace(
        '"port": scope["server"][1]}',
        '"port": scope["server"][1], "loop": type(__import__("asyncio").get_running_loop()).__module__}',
    )
)
assert '"loop": type(' in UVLOOP_SERVER, "test_incoming's uvicorn server changed: update this"


def target(lab: Lab) -> str:
    return f"netns/{lab.staging_ns}"


@pytest.mark.parametrize("variant", ["fd-passing", "relay", "relay+asan"])
def test_psycopg2_queries_the_staging_database(
    lab: Lab,
    postgres_in_staging: str,
    tmp_path: Path,
    variant: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if variant.startswith("relay"):
        monkeypatch.setenv("MIRRORD_NO_FD_PASSING", "1")
    else:
        monkeypatch.delenv("MIRRORD_NO_FD_PASSING", raising=False)
    if variant.endswith("asan"):
        request.getfixturevalue("asan_relay")  # the relay under AddressSanitizer
    code = f"""
        import json, psycopg2, socket
        with psycopg2.connect(host="{postgres_in_staging}", user="app", dbname="postgres") as db:
            with db.cursor() as cur:
                cur.execute("select name from pets")
                pets = [row[0] for row in cur.fetchall()]
                cur.execute("select inet_client_addr()::text")
                client = cur.fetchone()[0]
        # and the target's files, through the Python layer beside the relay
        token = open("/srv/app/secrets/token").read().strip()
        print(json.dumps({{"pets": pets, "client": client, "token": token}}))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    assert seen["pets"] == ["rex"]
    # libpq's connection came from staging (postgres sees staging's own address)
    assert seen["client"].split("/")[0] == lab.staging_backend_addr
    assert seen["token"] == "staging-token"


def test_subprocess_curl_from_a_python_app(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, subprocess
        out = subprocess.run(["curl", "-sf", "http://backend.staging.svc:8080/child"],
                             capture_output=True, text=True, check=True).stdout
        cleared = subprocess.run(["curl", "-sf", "http://backend.staging.svc:8080/cleared"],
                                 capture_output=True, text=True, check=True, env={}).stdout
        print(json.dumps({"child": json.loads(out)["path"], "cleared": json.loads(cleared)["path"]}))
    """
    assert last_json(run_app(target(lab), code, tmp_path=tmp_path)) == {
        "child": "/child",
        "cleared": "/cleared",
    }


def test_python_sockets_are_handled_once(lab: Lab, tmp_path: Path) -> None:
    code = """
        import json, socket, urllib.request
        from mirrord.layer import bootstrap
        from mirrord.layer.files import FilePatches
        body = json.loads(urllib.request.urlopen("http://backend.staging.svc:8080/once").read())
        families = [type(f).__name__ for f in bootstrap._layer.families]
        s = socket.create_connection(("backend.staging.svc", 8080))
        print(json.dumps({"path": body["path"], "families": families, "peer": list(s.getpeername())}))
    """
    seen = last_json(run_app(target(lab), code, tmp_path=tmp_path))
    # the relay took the sockets: the Python layer patched only the files
    assert seen["families"] == ["FilePatches"]
    assert seen["path"] == "/once"
    assert seen["peer"] == [lab.backend_addr, 8080]


def _uvloop_app(lab: Lab, tmp_path: Path, *flags: str) -> App:
    return App(lab, tmp_path, UVLOOP_SERVER, *flags)


@pytest.mark.usefixtures("transport")
def test_uvicorn_on_uvloop_receives_stolen_requests(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "mirrord.json"
    config.write_text(json.dumps({"feature": {"network": {"incoming": "steal"}}}))
    app = _uvloop_app(lab, tmp_path, "-f", str(config))
    try:
        url = f"http://{lab.staging_addr}:8080/"
        with requests.Session() as client:
            answers = [client.post(url, data=f"b{i}", timeout=10).json() for i in range(5)]
        assert [a["body"] for a in answers] == [f"b{i}" for i in range(5)]
        assert {a["who"] for a in answers} == {"local-app"}
        # uvicorn asked libuv for the peer and the socket's own name: the target's view
        assert {a["client"] for a in answers} == {lab.host_addr}
        assert {a["port"] for a in answers} == {8080}
        assert {a["loop"] for a in answers} == {"uvloop"}
    finally:
        app.stop()
    assert wait_for(lambda: "MIRRORD_" not in nat_rules(lab))


def test_uvicorn_on_uvloop_receives_mirrored_requests(lab: Lab, tmp_path: Path) -> None:
    app = _uvloop_app(lab, tmp_path)
    try:
        url = f"http://{lab.staging_addr}:8080/"
        answers = [requests.post(url, data=f"m{i}", timeout=10).text for i in range(3)]
        # the client is answered by the target; the app gets copies
        assert answers == ["staging-service"] * 3
        seen = app.seen(3)
        assert [s["body"] for s in seen] == ["m0", "m1", "m2"]
        assert {s["client"] for s in seen} == {lab.host_addr}
        assert {s["loop"] for s in seen} == {"uvloop"}
    finally:
        app.stop()
