"""sluice's errors: what a user can act on, said in one line (``SluiceError``).

Only the standard library here: the CLI says an error of any command, and reads the run
history, without importing the operators (``operators.base`` imports these names too).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping


class SluiceError(Exception):
    """A failure a user can act on: what was wrong, where, and what would fix it.

    The CLI prints ``str(error)`` on one line and exits non-zero, no traceback.
    ``param``: the step parameter the error is about (a filter's ``where``), where the
    operator knows it: the runtime says that parameter's line of the pipeline file.
    """

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where
        self.param = param

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def located(self, where: str) -> SluiceError:
        """Prefix a location (file:line, step, partition) unless one is set already."""
        if not self.where:
            self.where = where
        elif where not in self.where:
            self.where = f"{where}: {self.where}"
        return self


class DataError(SluiceError):
    """The data is not what the pipeline needs (a null label, a missing column...)."""


class ParamError(SluiceError):
    """An operator parameter is invalid in a way pydantic cannot express."""


class SchemaError(SluiceError):
    """A step's input schema lacks what the step needs (raised at plan time)."""


class MissingColumnError(SchemaError):
    """A column a step needs is not in its input (``columns``: those, where known)."""

    columns: tuple[str, ...] = ()


class ArtifactError(SluiceError):
    """A saved model cannot be loaded (missing, damaged or from a newer sluice)."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling (``__cause__``, else
    ``__context__``), and so on: each once."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def suggest(name: str, choices: Iterable[str], shown: Mapping[str, str] | None = None) -> str:
    """' did you mean 'x'?' for the closest of choices (said as ``shown`` has it, where
    given: a file's name as the path to it), or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{(shown or {}).get(close[0], close[0])}'?" if close else ""


def counted(n: int, word: str, words: str | None = None) -> str:
    """A count and its noun, singular for one: '1 iteration', '3 iterations' (``words``:
    a plural that is not ``word`` + 's')."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"
