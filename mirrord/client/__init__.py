"""The blocking client of the intproxy: the layer's (inside the app: standard library and
msgpack only), and the CLI's and the library's for their own requests."""
