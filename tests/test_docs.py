"""Every relative link in the README and the manual leads to a file, and to a heading there."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.unit

LINK = re.compile(r'\]\(([^)\s]+)\)')
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def _anchor(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(page: Path) -> set[str]:
  text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)  # Comments in code are no headings.
  return {_anchor(h) for h in re.findall(r'^#+ (.*)$', text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
  broken = []
  for target in LINK.findall(page.read_text()):
    if re.match(r'[a-z]+:', target):  # https:, mailto: and the like: not ours to check.
      continue
    path, _, anchor = target.partition('#')
    file = (page.parent / path).resolve() if path else page
    if not file.exists() or (anchor and file.suffix == '.md' and anchor not in _anchors(file)):
      broken.append(target)
  return broken


@pytest.mark.parametrize('page', PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
  assert not broken_links(page), (
    f'{page.relative_to(ROOT)} links to nothing at {broken_links(page)}'
  )


def test_a_broken_link_is_found(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('# A heading\n\n[there](missing.md), [here](#a-heading), [no](#no-heading)\n')
  assert broken_links(page) == ['missing.md', '#no-heading']
