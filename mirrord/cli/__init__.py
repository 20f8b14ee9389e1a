"""The command line: `python -m mirrord app.py`, `mirrord exec -- cmd`, and helpers."""
