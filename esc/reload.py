"""SIGHUP: read the credentials, the policy and the trusted peers again, without a restart.

Everything is read and checked first; only when all of it is good does the server switch to
it, at once (the protocol core reads its settings on every request). A file that cannot be
used is refused with one log line, and the settings in force stay. Turning Digest on or
off, or changing the realm, needs a restart (it changes what clients are challenged with);
a reload that asks for it says so and changes nothing.

The credentials are swapped inside the running authenticator, so nonces already handed
out stay valid.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

log = logging.getLogger("esc.reload")


def reloader(server: Any, authenticator: Any, settings: Any,
             load_settings_again: Callable[[], Any]) -> Callable[[], None]:
    """The SIGHUP handler for a running server (runs on its event loop)."""
    from sip_adapter.protocol.authorization import PolicyError, load_policy
    from sip_adapter.protocol.digest import CredentialsError, load_credentials

    from .config import ConfigError, trusted_networks

    def reload() -> None:
        try:
            fresh = load_settings_again()
            if bool(fresh.auth_file) != bool(settings.auth_file) or \
                    (authenticator is not None and fresh.realm and
                     fresh.realm != authenticator.realm):
                raise ConfigError("turning Digest on or off, or changing the realm, "
                                  "needs a restart")
            credentials = load_credentials(fresh.auth_file) if fresh.auth_file else None
            policy = load_policy(fresh.policy_file) if fresh.policy_file else None
            peers = trusted_networks(fresh)
        except (ConfigError, CredentialsError, PolicyError, ValueError, OSError) as error:
            log.error("reload refused, the settings in force stay: %s", error)
            return
        if authenticator is not None and credentials is not None:
            authenticator.credentials = credentials
        service = server.service
        service.reconfigure(dataclasses.replace(service.config, policy=policy,
                                                trusted_peers=peers))
        log.info("reloaded: %s%s, %d trusted peer network(s)",
                 f"credentials from {fresh.auth_file}, " if fresh.auth_file else "",
                 f"policy from {fresh.policy_file}" if fresh.policy_file else "no policy",
                 len(peers))

    return reload
