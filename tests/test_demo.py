"""The README's first command: the demo builds the lab and shows what the app saw."""

from __future__ import annotations

from helpers import mirrord

from mirrord.lab import Lab


def test_demo_prints_its_findings(lab: Lab) -> None:
    # the `lab` fixture only ensures root and a working lab; the demo builds its own
    proc = mirrord("demo", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "resolved backend.staging.svc -> 198.18." in out
    assert "staging-loopback" in out
    assert "STAGING_GREETING=hello-from-staging" in out
    assert "what the app saw" in out
    # mirror: staging answered the user, the local app got a copy of each request
    assert out.count("(staging answered)") == 3
    assert out.count("local app got>") == 3 and '"body": "order-2"' in out
    # steal with a header filter: only the request with the header came to the laptop
    assert "with x-mirrord-user: me> -> 'hello from your laptop'" in out
    assert "without it> -> 'staging-service'" in out
