"""Kubernetes API failures as one line a user can act on.

The API server explains a refusal itself (``pods "x" is forbidden: User "u" cannot create
resource "pods/portforward" in API group "" in the namespace "ns"``): that sentence names
the verb and the resource RBAC denied, so it is kept. A refused port-forward comes back
from the client's websocket as ``ApiException(status=0)`` with the HTTP status only in its
text, and the server's explanation in the websocket exception it came from.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mirrord.errors import MirrordError


class KubeError(MirrordError):
    """A Kubernetes call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _server_message(body: Any) -> str | None:
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str) or not body.strip():
        return None
    try:
        data = json.loads(body)
    except ValueError:
        # the websocket's refusal quotes the body as a bytes literal: b'{...}'
        m = re.search(r"(\{.*\})", body, re.S)
        if m is None:
            return None
        try:
            data = json.loads(m.group(1).encode().decode("unicode_escape"))
        except ValueError:
            return None
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else None


def _status_of(exc: BaseException) -> int:
    status = getattr(exc, "status", None) or 0
    if not status:
        # kubernetes.stream: the handshake's HTTP status is on the websocket's exception
        status = getattr(exc.__context__, "status_code", None) or 0
        if not status and (m := re.search(r"Handshake status (\d{3})", str(exc))):
            status = int(m.group(1))
    return int(status)


def describe_api_error(exc: BaseException, doing: str) -> KubeError:
    """``exc`` from a client call made while ``doing`` (e.g. "create the agent Job in
    namespace x") as a one-line ``KubeError``."""
    status = _status_of(exc)
    message = (
        _server_message(getattr(exc, "body", None))
        or _server_message(getattr(exc.__context__, "resp_body", None))
        or _server_message(str(getattr(exc, "reason", "") or ""))
    )
    if status == 403:
        detail = message or "forbidden"
        return KubeError(f"cannot {doing}: forbidden by RBAC: {detail}", status)
    if status == 401:
        return KubeError(f"cannot {doing}: not authenticated (check your kubeconfig)", status)
    if status:
        detail = message or getattr(exc, "reason", None) or f"HTTP {status}"
        return KubeError(f"cannot {doing}: {detail}", status)
    text = " ".join(str(getattr(exc, "reason", None) or exc).split())
    if "does not answer" in text:
        return KubeError(f"cannot {doing}: {text[:300]}")
    if "Max retries exceeded" in text or "Connection refused" in text:
        m = re.search(r"host='([^']*)', port=(\d+)", text)
        where = f" at {m.group(1)}:{m.group(2)}" if m else ""
        return KubeError(f"cannot {doing}: the Kubernetes API{where} does not answer")
    return KubeError(f"cannot {doing}: {text[:300]}")


def call(doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its failures as ``KubeError`` (see :func:`describe_api_error`)."""
    from urllib3.exceptions import HTTPError

    from mirrord.kube.rest import RestError

    try:
        return fn(*args, **kwargs)
    except (RestError, HTTPError, OSError) as exc:
        raise describe_api_error(exc, doing) from None
