"""Targets: parsing what `-t` names and finding its process (local targets so far)."""
