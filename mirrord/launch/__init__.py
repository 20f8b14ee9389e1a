"""Starting a session: the target's agent, the intproxy, and the app's environment.

Shared by the CLI and `mirrord.Session`; neither reaches into the other."""
