"""Errors meant for people: one sentence saying what was wrong and what to do.

The CLI prints ``error: <message>`` and exits with code 2 for any ``Magic3DError``.
"""


class Magic3DError(Exception):
    """Base of every error whose message is written for the person running magic3d."""


class ConfigError(Magic3DError):
    """A config key or value is invalid."""


class PriorError(Magic3DError):
    """A prior cannot be found, loaded or used with the given prompt."""


class InputError(Magic3DError):
    """A prompt, file or path given by the user cannot be used."""


class RunError(Magic3DError):
    """A run failed in a way the user can act on (divergence, out of memory, full disk)."""
