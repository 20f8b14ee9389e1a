"""The code under test: it knows staging only by its names, as it would in a pod."""

from __future__ import annotations

import os

import requests


def inventory_url() -> str:
    return os.environ.get("INVENTORY_URL", "http://backend.staging.svc:8080")


def fetch_inventory() -> requests.Response:
    return requests.get(f"{inventory_url()}/items", timeout=10)
