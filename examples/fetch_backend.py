"""A tiny app that needs staging: run it with `python -m mirrord -t netns/STAGING fetch_backend.py`.

Without mirrord every line below fails on a laptop: the name exists only in staging's DNS,
the backend is reachable only from staging, and the variable is set only in staging.
"""

import json
import os
import socket

import requests

name = "backend.staging.svc"
address = socket.gethostbyname(name)
print(f"resolved {name} -> {address}")

reply = requests.get(f"http://{name}:8080/orders", timeout=10).json()
print(
    f"GET http://{name}:8080/orders -> service={reply['service']}, the backend saw client {reply['client']}"
)

sidecar = requests.get("http://127.0.0.1:9090/", timeout=10).text
print(f"GET http://127.0.0.1:9090/ (staging's own loopback) -> {sidecar}")

print(f"env STAGING_GREETING={os.environ.get('STAGING_GREETING')}")
print(
    json.dumps(
        {
            "address": address,
            "backend": reply,
            "sidecar": sidecar,
            "greeting": os.environ.get("STAGING_GREETING"),
        }
    )
)
