"""Run the sample notebook against a fresh lab, save it with its outputs, and take the
README's picture of its live table (as root; needs Debian's chromium, for this only).

    sudo python3 examples/notebook_picture.py

The notebook is executed by a real kernel (nbclient), written back to
examples/live_traffic.ipynb, converted to HTML by nbconvert (the tables' HTML, not the
widget, which needs JavaScript from the network), and shot by headless chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from mirrord.lab import create_lab

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "live_traffic.ipynb"
PICTURE = HERE / "live_traffic.png"
#: the cells from the table shown again to the DataFrame
SHOWN = ("live", "live.df")


def execute() -> nbformat.NotebookNode:
    with create_lab() as lab:
        os.environ["MIRRORD_TARGET"] = f"netns/{lab.staging_ns}"
        os.environ["STAGING_URL"] = lab.service_url
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    nbformat.write(nb, NOTEBOOK)
    return nb


def picture(nb: nbformat.NotebookNode) -> None:
    shown = nbformat.v4.new_notebook(
        cells=[cell for cell in nb.cells if cell.cell_type == "code" and cell.source in SHOWN],
        metadata={k: v for k, v in nb.metadata.items() if k != "widgets"},
    )
    exporter = HTMLExporter(template_name="lab")
    exporter.display_data_priority = ["text/html", "image/png", "text/plain"]  # no widget view
    body, _ = exporter.from_notebook_node(shown)
    browser = shutil.which("chromium") or sys.exit("needs chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "live.html"
        page.write_text(body)
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=860,390",
                f"--screenshot={PICTURE}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


if __name__ == "__main__":
    picture(execute())
    print(f"wrote {NOTEBOOK} and {PICTURE}")
