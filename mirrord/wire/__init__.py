"""The wire's I/O edge, shared by the agent and the intproxy: framed links, the
connection multiplexer, non-blocking connects (anyio)."""
