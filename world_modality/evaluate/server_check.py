"""An evaluation against a policy server (`--policy_server`): refused before anything runs unless the server
serves the weights and the memory mode evaluated (its outcomes would be another policy's)."""

from __future__ import annotations

from ..config import ConfigError
from ..inference.remote import PolicyClient, ServerLost, parse_address


def check_server(address: str, weights_sha256: str, memory: str) -> dict:
    """The metadata of the server at `address`, or ConfigError when it is unreachable or serves other weights or
    another memory mode than the evaluation names."""
    host, port = parse_address(address)
    try:
        with PolicyClient(host, port, retries=2) as client:
            meta = client.get_server_metadata()
    except ServerLost as err:
        raise ConfigError(f"--policy_server {address}: {err}") from None
    if meta.get("weights_sha256") != weights_sha256:
        raise ConfigError(
            f"--policy_server {address} serves {meta.get('checkpoint')!r} (weights sha256 "
            f"{meta.get('weights_sha256')}), not the checkpoint evaluated (weights sha256 "
            f"{weights_sha256}); start the server with the same --checkpoint."
        )
    if meta.get("memory_mode") != memory:
        raise ConfigError(
            f"--policy_server {address} serves memory mode {meta.get('memory_mode')!r}, the evaluation "
            f"asks for {memory!r}; start the server with --memory {memory}."
        )
    return meta
