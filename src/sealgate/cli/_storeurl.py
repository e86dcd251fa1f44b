"""Where a store command finds the fleet database: --store-env, else the config's store_env/store_file."""

import os

from sealgate.cli._common import CommandError, fleetOf, hasConfig, loadConfigFor


def fleetURL(args) -> str | None:
    """
    The fleet database's URL for a store command: from C{--store-env VAR},
    else from the config's C{[gateway] store_env}/C{store_file} (read
    now: only this secret, not the backends'), else None (the embedded
    store, also whenever C{--state-dir} is given).
    """
    env = getattr(args, "store_env", None)
    if env:
        url = os.environ.get(env)
        if not url:
            raise CommandError(f"--store-env: environment variable {env} is not set")
        return url
    if getattr(args, "state_dir", None) or not hasConfig(args):
        return None
    fleet = fleetOf(args, loadConfigFor(args).gateway)
    return None if fleet is None else fleet.url
