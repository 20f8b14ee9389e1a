"""HTTP/1.x helpers shared by the agent (filtered steal) and the intproxy (mirroring)."""
