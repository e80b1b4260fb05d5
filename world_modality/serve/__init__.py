"""A policy served over WebSocket with msgpack-encoded numpy arrays (openpi's policy-server protocol):
`server.PolicyServer` answers action-chunk requests; the client side is `inference/remote.py`, or openpi's own."""
