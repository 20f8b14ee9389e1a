"""Kubernetes targets, through the official client (imported only when a session needs it).

- ``client``: the API client from the user's kubeconfig and context
- ``errors``: API failures as one line (what RBAC denied, what was not found)
- ``resolve``: target path -> pod, container and container id
- ``agent_spec``: the agent's Job, ephemeral container and token Secret, as manifests
- ``agent``: joining a target's agent, or starting one and waiting until it is ready
- ``forward``: the intproxy's port-forward to the agent, as an anyio stream
- ``objects``: manifests <-> the client's models
"""
