"""The life of mirrord's helper processes (agent, intproxy): ready line, signals, loop."""
