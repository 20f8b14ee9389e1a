"""Linux helpers shared by the agent, the CLI and the lab: libc calls, namespaces, /proc."""
