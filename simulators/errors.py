"""The one exception root of the ``simulators`` package and its specific errors."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every error the simulators raise on purpose."""


class UnknownPatientError(SimulatorError, KeyError):
    """A patient name that is not part of the shipped in-silico population.

    It is also a :class:`KeyError`, so code that looks patients up like a mapping can catch it
    the usual way.
    """

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        self.name = name
        self.known = known
        hint = f"; known patients: {known[0]} … {known[-1]} ({len(known)} in all)" if known else ""
        self.message = f"unknown patient {name!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message (quoted); keep it readable.
        return self.message


class InvalidInputError(SimulatorError, ValueError):
    """An argument or model input outside its physical domain (negative, NaN, wrong shape …)."""
