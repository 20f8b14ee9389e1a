"""The faces of mirrord for Python code: `mirrord.Session` and the pytest plugin."""
