"""The agent: runs where the target runs and does the remote half of the work."""
