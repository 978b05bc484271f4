"""A/B comparisons that survive a noisy, shared machine: alternate the two sides, compare medians.

A single run against a figure from another run can be off by 30% here. Alternating A and B
(in the order ABBA, so a drift in the machine's load hits both alike) and comparing each
side's median and best cancels most of that.

In one process, the benchmark alternates epochs of two configs (`--config.benchmark.compare`,
see mlp/tools/benchmark.py). For what a process reads at startup (XLA_FLAGS) or for whole-process
times, this module alternates whole commands:

  python -m mlp.tools.ab --b_env=XLA_FLAGS=--xla_cpu_use_xnnpack=false -- \\
    python main.py --mode=benchmark --config=configs/default.py

Each side's runs are timed (metric wall_seconds) or, with --metric=FIELD, read from the last
JSON line that the command prints on stdout (e.g. the benchmark's examples_per_sec).
"""

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import ml_collections

from input_pipeline.errors import UserError
from mlp.core import configuration


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[list, list]:
  """Each side's measurements of `rounds` rounds, run in the order AB BA AB BA ..."""
  values = ([], [])
  for round_ in range(rounds):
    order = (0, 1) if round_ % 2 == 0 else (1, 0)
    for side in order:
      values[side].append((a, b)[side]())
  return values


def summarize(a: list[float], b: list[float], higher_is_better: bool) -> dict[str, float]:
  """Each side's median and best, and B / A of both."""
  best = max if higher_is_better else min
  result = {
    'a_median': statistics.median(a),
    'a_best': best(a),
    'b_median': statistics.median(b),
    'b_best': best(b),
  }
  result['ratio_median'] = result['b_median'] / result['a_median']
  result['ratio_best'] = result['b_best'] / result['a_best']
  return result


def _number(x: float) -> str:
  return f'{x:,.0f}' if abs(x) >= 100 else f'{x:.3g}'


def table(summary: dict, unit: str, a_name: str, b_name: str) -> str:
  """A few lines for stderr: the two sides and their ratio."""
  a_median, a_best, b_median, b_best = (
    _number(summary[k]) for k in ('a_median', 'a_best', 'b_median', 'b_best')
  )
  return '\n'.join(
    [
      f'  A {a_name}: median {a_median}, best {a_best} {unit}',
      f'  B {b_name}: median {b_median}, best {b_best} {unit}',
      f'  B / A: {summary["ratio_median"]:.3f} (medians), {summary["ratio_best"]:.3f} (bests)',
    ]
  )


def _parse_value(text: str):
  """As ml_collections parses a --config.field=value flag: a Python literal, else a string."""
  try:
    return ast.literal_eval(text.capitalize() if text in ('true', 'false') else text)
  except (SyntaxError, ValueError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: str) -> ml_collections.ConfigDict:
  """A copy of config with space-separated overrides ('run.steps_per_call=100')."""
  changed = config.copy_and_resolve_references()
  for item in overrides.split():
    path, equals, value = item.partition('=')
    if not equals:
      raise UserError(f'benchmark.compare: {item!r} is not group.field=value.')
    try:
      configuration.assign(changed, path, _parse_value(value))
    except UserError as error:
      raise UserError(f'benchmark.compare: {error}') from None
  return changed


def _env_pairs(items: list[str]) -> dict[str, str]:
  pairs = {}
  for item in items:
    name, equals, value = item.partition('=')
    if not equals:
      raise UserError(f'--a_env/--b_env: {item!r} is not NAME=value.')
    pairs[name] = value
  return pairs


def _run_once(command: list[str], env: dict[str, str], metric: str) -> float:
  """Runs command once; its wall seconds, or the field `metric` of its last JSON line."""
  start = time.perf_counter()
  done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    tail = done.stderr.strip().splitlines()[-1:] or ['no output']
    raise UserError(f'{" ".join(command)} exited with {done.returncode}: {tail[0]}')
  if metric == 'wall_seconds':
    return seconds
  lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
  if not lines or metric not in json.loads(lines[-1]):
    raise UserError(f'{" ".join(command)} printed no JSON line with the field {metric!r}.')
  return float(json.loads(lines[-1])[metric])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m mlp.tools.ab',
    description=__doc__,
    formatter_class=argparse.RawTextHelpFormatter,
  )
  parser.add_argument('--rounds', type=int, default=5, help='runs of each side (default 5)')
  parser.add_argument(
    '--metric', default='wall_seconds', help='wall_seconds, or a field of the JSON line'
  )
  for side in ('a', 'b'):
    parser.add_argument(
      f'--{side}_env', action='append', default=[], help=f'NAME=value set for side {side.upper()}'
    )
    parser.add_argument(
      f'--{side}_args', default='', help=f'arguments appended for side {side.upper()}'
    )
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command or args.rounds < 1:
    parser.error('give --rounds >= 1 and a command after --')
  try:
    sides = [
      (command + getattr(args, f'{s}_args').split(), _env_pairs(getattr(args, f'{s}_env')))
      for s in ('a', 'b')
    ]
    a, b = alternate(
      *(lambda c=c, e=e: _run_once(c, e, args.metric) for c, e in sides), args.rounds
    )
  except UserError as error:
    print(f'Error: {error}', file=sys.stderr)
    return 1
  summary = summarize(a, b, higher_is_better=args.metric != 'wall_seconds')
  names = [
    ' '.join([*getattr(args, f'{s}_env'), getattr(args, f'{s}_args')]).strip() or 'as is'
    for s in ('a', 'b')
  ]
  print(
    f'{args.rounds} rounds, alternated:\n' + table(summary, args.metric, *names), file=sys.stderr
  )
  print(
    json.dumps(
      {
        'metric': args.metric,
        'rounds': args.rounds,
        'a': names[0],
        'b': names[1],
        'a_values': a,
        'b_values': b,
        **summary,
      }
    )
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
