"""Targets: parsing what `-t` names (`path`), and finding its process on this host
(`local`: pid/, netns/; `container`: a Kubernetes container by its id, from the agent)."""
