"""Files the project reads, checked against a declared shape before anything trusts them.

Each file a run reads (checkpoint metadata, config.json, dataset.json, pacing.json, the
decoded-data cache, metrics.jsonl) declares its shape once, next to the code that writes it: a
Value per field with its type and range. A file that breaks its shape is one line naming the
file, the field and what to do; a derived cache that breaks it is rebuilt, with one warning.
The declarations are data, so the tests break every declared field in turn.
"""

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Value:
  """What one field may hold.

  kind: int, float (an int is a float too), str, bool, list, dict or np.ndarray; or a tuple of
  such types, any of which works.
  low, high: bounds of a number, inclusive. finite: whether a float refuses NaN and infinities.
  fields: a dict's declared keys (others are allowed and ignored); items: the shape of each of
  a list's items, or of each value of a dict with any keys. min_items, max_items: a list's or
  dict's length. dtype, ndim: an array's (dtype a name, or a kind: 'U' is text). optional: the
  key may be absent; nullable: None works.
  """

  kind: type | tuple[type, ...]
  low: float | None = None
  high: float | None = None
  finite: bool = True
  fields: dict[str, 'Value'] | None = None
  items: 'Value | None' = None
  min_items: int = 0
  max_items: int | None = None
  dtype: str | None = None
  ndim: int | None = None
  optional: bool = False
  nullable: bool = False

  def expected(self) -> str:
    """What works, as the error message says it."""
    names = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false'}
    names |= {list: 'a list', dict: 'a JSON object'}
    if self.kind is np.ndarray:
      return f'a {self.ndim}-D {self.dtype} array'
    kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
    text = ' or '.join(names[kind] for kind in kinds)
    if self.low is not None and self.high is not None:
      text += f' in [{self.low:g}, {self.high:g}]'
    elif self.low is not None:
      text += f' >= {self.low:g}'
    elif self.high is not None:
      text += f' <= {self.high:g}'
    if self.kind is float and self.finite:
      text += ', finite'
    if self.min_items or self.max_items is not None:
      most = '' if self.max_items is None else f' and at most {self.max_items}'
      text += f' of at least {self.min_items}{most} {"characters" if self.kind is str else "items"}'
    return text + (' or null' if self.nullable else '')


class Mismatch(ValueError):
  """A value that breaks its shape: `field` is its dotted path, the message says how."""

  def __init__(self, field: str, value: Any, shape: Value):
    self.field = field
    shown = repr(value)[:60]
    if isinstance(value, np.ndarray):
      shown = f'{value.dtype} {value.shape}'
    super().__init__(
      f'{field or "the whole file"} is {"missing" if value is _ABSENT else shown}, expected '
      f'{shape.expected()}'
    )


_ABSENT = object()  # A declared key that is not there.


def _right_kind(value: Any, shape: Value) -> bool:
  if shape.kind is np.ndarray:
    return (
      isinstance(value, np.ndarray)
      and shape.dtype in (value.dtype, value.dtype.kind)
      and value.ndim == shape.ndim
    )
  if shape.kind is float:
    return isinstance(value, int | float) and not isinstance(value, bool)
  if shape.kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, shape.kind)


def _in_range(value: Any, shape: Value) -> bool:
  if shape.kind in (int, float):
    if shape.kind is float and shape.finite and not math.isfinite(value):
      return False
    low = shape.low is None or value >= shape.low
    return low and (shape.high is None or value <= shape.high)
  if shape.kind in (list, dict, str):
    return shape.min_items <= len(value) <= (shape.max_items or len(value))
  return True


def check(value: Any, shape: Value, field: str = '') -> Any:
  """value, once it fits shape; else Mismatch naming the first field that does not."""
  if value is None and shape.nullable:
    return value
  if not _right_kind(value, shape) or not _in_range(value, shape):
    raise Mismatch(field, value, shape)
  prefix = f'{field}.' if field else ''
  if shape.kind is list and shape.items is not None:
    for index, item in enumerate(value):
      check(item, shape.items, f'{field}[{index}]')
  if shape.kind is dict:
    for key, declared in (shape.fields or {}).items():
      if key not in value:
        if not declared.optional:
          raise Mismatch(prefix + key, _ABSENT, declared)
        continue
      check(value[key], declared, prefix + key)
    if shape.items is not None:
      for key, item in value.items():
        check(item, shape.items, prefix + str(key))
  return value


def parse(path: pathlib.Path, shape: Value) -> Any:
  """The checked JSON of the file at path (on a disk, or an epath in a bucket); Mismatch or
  ValueError (not JSON) if broken.

  OSError (absent, unreadable) passes through: each reader says what that means for it.
  """
  text = path.read_bytes()
  try:
    value = json.loads(text)
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(f'not valid JSON ({error})') from None
  return check(value, shape)


def read_json(path: pathlib.Path, shape: Value, what_to_do: str) -> Any:
  """The checked JSON of path; a broken file is one UserError naming it, the field and
  what_to_do. An absent or unreadable file raises OSError, as open() does."""
  # Here, not at the top: input_pipeline, which this module checks, imports it.
  from input_pipeline.errors import UserError

  try:
    return parse(path, shape)
  except ValueError as error:
    raise UserError(f'{path}: {error}; {what_to_do}.') from None


def read_derived(path: pathlib.Path, shape: Value, rebuilt: str) -> Any | None:
  """The checked JSON of a file derived from others; None where absent, unreadable or broken
  (then with one warning saying that it is `rebuilt`)."""
  try:
    return parse(path, shape)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as error:
    logging.warning('%s is damaged (%s); %s.', path, error, rebuilt)
    return None
