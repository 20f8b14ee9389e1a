"""JSON calls to the API server, authenticated as the official client's configuration
says (TLS material, bearer tokens, exec and auth-provider plugins all end up there).

Why not the client's typed API classes: importing ``CoreV1Api`` and ``AppsV1Api`` builds
some 500 pydantic models, about 1.2 s of a CLI start whose whole budget is 3 s. The CLI
needs a dozen calls and reads a handful of fields, so it speaks JSON over the client's
own HTTP library (urllib3) instead; the manifests it sends are plain dicts anyway.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

#: Every call answers within this (the API server is near; a dead one fails fast).
TIMEOUT = urllib3.Timeout(connect=10, read=30)


class RestError(Exception):
    """The API server refused (``status``) or did not answer (``status == 0``); ``body``
    is its Status document, as the client's ``ApiException`` carries it."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason
        self.body = body


class Rest:
    """One API server; ``configuration`` is a ``kubernetes.client.Configuration``."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration
        self.host = configuration.host.rstrip("/")
        kw: dict[str, Any] = {"maxsize": 4, "retries": False}
        if self.host.startswith("https"):
            kw["cert_reqs"] = ssl.CERT_REQUIRED if configuration.verify_ssl else ssl.CERT_NONE
            kw["ca_certs"] = configuration.ssl_ca_cert
            kw["cert_file"] = configuration.cert_file
            kw["key_file"] = configuration.key_file
            if getattr(configuration, "tls_server_name", None):
                kw["server_hostname"] = configuration.tls_server_name
            if configuration.assert_hostname is not None:
                kw["assert_hostname"] = configuration.assert_hostname
        if configuration.proxy:
            self.pool: urllib3.PoolManager = urllib3.ProxyManager(configuration.proxy, **kw)
        else:
            self.pool = urllib3.PoolManager(**kw)

    @classmethod
    def of(cls, api: Any) -> Rest:
        """The REST face of an ``ApiClient`` (made once per client)."""
        rest = getattr(api, "_mirrord_rest", None)
        if rest is None:
            rest = cls(api.configuration)
            api._mirrord_rest = rest
        return rest

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "mirrord-py"}
        if content_type:
            headers["Content-Type"] = content_type
        # runs the refresh hooks (exec plugins, expiring tokens) as the client would
        for auth in self.configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        url = self.host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: Any = TIMEOUT,
    ) -> Any:
        """The answer's JSON (``stream``: the open response); ``RestError`` otherwise."""
        data = None if body is None else json.dumps(body).encode()
        try:
            resp = self.pool.request(
                method,
                self._url(path, query),
                body=data,
                headers=self._headers(content_type if data is not None else None),
                preload_content=not stream,
                timeout=timeout,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise RestError(
                0, f"the Kubernetes API at {self.host} does not answer: {exc}"
            ) from None
        if resp.status >= 400:
            text = resp.data.decode(errors="replace") if not stream else resp.read().decode()
            raise RestError(resp.status, resp.reason or "", text)
        if stream:
            return resp
        return json.loads(resp.data) if resp.data else {}

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any, **query: Any) -> Any:
        return self.request("POST", path, body=body, query=query)

    def patch(self, path: str, body: Any, kind: str = "strategic-merge-patch") -> Any:
        return self.request("PATCH", path, body=body, content_type=f"application/{kind}+json")

    def delete(self, path: str, **query: Any) -> Any:
        return self.request("DELETE", path, query=query)


def path(group: str, namespace: str | None, resource: str, name: str | None = None) -> str:
    """The URL path of a resource: ``group`` is ``""`` (core), ``apps/v1``, ``batch/v1``..."""
    base = "/api/v1" if group in ("", "v1") else f"/apis/{group}"
    where = f"/namespaces/{quote(namespace)}" if namespace else ""
    tail = f"/{quote(name)}" if name else ""
    return f"{base}{where}/{resource}{tail}"
