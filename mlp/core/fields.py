"""How a config field is declared: its default, what it is for, its check and its role (whether
a resume may change it, a vmapped sweep vary it, and whether it changes results at all)."""

import dataclasses
import enum
from collections.abc import Callable
from typing import Any


class Role(enum.Enum):
  """What a field decides, from which resume, sweep and reporting rules follow."""

  # Changes the results. Fixed for a run (a resume refuses a change); sweep trials that differ
  # in it train in separate programs.
  RESULT = 'result'
  # Changes the results, and is a value inside the compiled program (an optimizer
  # hyperparameter, a rate, a seed): trials differing only in such fields train in one program.
  TRACED = 'traced'
  # Chooses the examples of the train and validation splits: fixed for a run and for every
  # trial of a sweep, so that they are scored on the same data.
  SPLIT = 'split'
  # How long to train: a resume may raise it, unless a schedule's length depends on it.
  LENGTH = 'length'
  # How the run executes, not what it computes: a resume may change it, and a sweep trial's
  # identity ignores it.
  EXECUTION = 'execution'


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default, role and purpose, and the values that work.

  `expected` says what `valid` accepts, for the error; `kind` types a default of None.
  `same_as_before`: runs saved before the field existed behaved as its default, which fills in
  when they are read (execution and length fields always fill in).
  """

  default: Any
  role: Role
  doc: str
  valid: Callable[[Any], bool] = lambda value: True
  expected: str = ''
  kind: type | None = None
  same_as_before: bool = False

  @property
  def fills_older_runs(self) -> bool:
    return self.same_as_before or self.role in (Role.EXECUTION, Role.LENGTH)


def positive(default: float, role: Role, doc: str, **options) -> Field:
  return Field(default, role, doc, lambda value: value > 0, 'a positive number', **options)


def at_least(low: float, default: float, role: Role, doc: str, **options) -> Field:
  return Field(default, role, doc, lambda value: value >= low, f'{low} or more', **options)


def fraction(default: float, role: Role, doc: str, closed: bool = True, **options) -> Field:
  """A value in [0, 1), or in (0, 1) where closed is False."""
  if closed:
    return Field(default, role, doc, lambda value: 0 <= value < 1, 'in [0, 1)', **options)
  return Field(default, role, doc, lambda value: 0 < value < 1, 'in (0, 1)', **options)


def choice(default: str, options: tuple[str, ...], role: Role, doc: str, **more) -> Field:
  return Field(
    default, role, doc, lambda value: value in options, f'one of {", ".join(options)}', **more
  )


def seed(role: Role, doc: str) -> Field:
  """A seed: what jax.random.key and NumPy's generators both take."""
  return Field(
    0, role, doc, lambda value: isinstance(value, int) and 0 <= value < 2**31, 'in [0, 2**31)'
  )


def widths(default: tuple[int, ...], role: Role, doc: str, **options) -> Field:
  return Field(
    default,
    role,
    doc,
    lambda value: (
      isinstance(value, tuple | list)
      and len(value) >= 1
      and all(isinstance(n, int) and n >= 1 for n in value)
    ),
    'one or more positive widths, such as 500,500',
    **options,
  )
