"""The intproxy: one per session, owns the agent link and serves every layer of the app."""
