"""The typed errors library code raises. Only the CLI (arena_cli) turns them into one-line messages and
exit codes; a service embedding a stage catches them like any exception.

Every message is one line for the user: what was wrong and how to fix it.
"""
from __future__ import annotations


class ArenaError(Exception):
    """Base of the errors worded for the user."""


class ConfigError(ArenaError, ValueError):
    """A configuration problem (arena.toml, environment, a setting that cannot work)."""


class InputError(ArenaError, ValueError):
    """Bad input: a missing or malformed file, a bad argument value, a record that cannot be used."""


class BrokerError(ArenaError, RuntimeError):
    """The Kafka broker cannot be reached or the embedded one cannot be started."""


def need_broker(cfg, what: str, hint: str = "") -> None:
    """Refuse to run a service that needs a broker when none is configured."""
    if not cfg.kafka.bootstrap_servers:
        raise BrokerError(f"{what} needs a running broker: start one with `arena broker` in this directory "
                          f"(commands run here find it), or export KAFKA_BOOTSTRAP_SERVERS=host:port, or set "
                          f"kafka.bootstrap_servers in arena.toml{hint}")


class UsageError(InputError):
    """A bad command-line argument (raised by the commands in arena_cli)."""
