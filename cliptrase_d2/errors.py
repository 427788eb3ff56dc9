"""The one error family for bad input.

A ``UserError`` says what is wrong with something the user gave (a setting, a file, an image, a
vocabulary, a dataset) and how to fix it. The package's entry points (train_net, compare,
the demos, the benchmark, the dataset check) catch only this family and print its message as
one line; any other exception is a bug and keeps its traceback.

Each concrete error also derives from the builtin a caller would expect (``ValueError``,
``KeyError``, ``FileNotFoundError`` ...), so ``except ValueError`` keeps working.
"""

import sys

__all__ = [
    "UserError",
    "ConfigError",
    "InputError",
    "MissingFileError",
    "OutputError",
    "UnknownNameError",
    "OutputExistsError",
    "OutputNotWritableError",
    "WeightsError",
    "invalid_value",
    "exit_on_user_error",
]


class UserError(Exception):
    """Bad input: the message names the file, setting or value and says how to fix it."""

    def __str__(self) -> str:  # KeyError's str() would add quotes around the message
        text = str(self.args[0]) if len(self.args) == 1 else super().__str__()
        if text.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            # torch re-raises a worker's error with its traceback as the message: keep ours
            return text.rstrip().rpartition(f"{type(self).__name__}: ")[2]
        return text


class ConfigError(UserError, ValueError):
    """A config key, a command-line option or a setting has a value that cannot be used."""


class InputError(UserError, ValueError):
    """An image, a vocabulary, a ground truth or a dataset record cannot be used as given."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist (the message says how to create it)."""


class OutputError(UserError, OSError):
    """An output cannot be written where asked (exists, not writable, disk full)."""


class UnknownNameError(UserError, KeyError):
    """A name that is not known: a config key, a dataset, a head (the message lists the known
    ones)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file already exists (or would replace an input) and replacing it was not asked
    for."""


class OutputNotWritableError(OutputError, PermissionError):
    """An output folder cannot be created or written."""


class WeightsError(UserError, RuntimeError):
    """A model or weights value that cannot be used; the message names it and how to fix it."""


def invalid_value(name: str, value, expected: str, fix: str = "") -> ConfigError:
    """The one-line ConfigError for a setting, option or argument ``name`` given a ``value`` it
    cannot take: '<name> must be <expected>, got <value><fix>'."""
    return ConfigError(f"{name} must be {expected}, got {value!r}{fix}")


def exit_on_user_error(main, *args):
    """Returns ``main(*args)``; a UserError ends the process with the one line 'error: <message>'
    (exit status 1). Anything else is a bug and keeps its traceback."""
    try:
        return main(*args)
    except UserError as error:
        sys.exit(f"error: {error}")
