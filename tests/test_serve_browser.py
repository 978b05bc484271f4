"""The page in headless Chromium: mouse strokes of a 1 and a 7, a photo, the run's facts, a phone.

Needs Debian's chromium at /usr/bin/chromium (.ci/run installs it); Playwright drives it (its own
browser download is not used). A missing browser fails the test rather than skipping it.
Set SERVE_SCREENSHOT=docs/serve_page.png to refresh the README's screenshot.
"""

import base64
import io
import json
import os
import re
import shutil

import pytest
from conftest import ROOT
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from test_serve import serving

pytestmark = pytest.mark.slow

CHROMIUM = '/usr/bin/chromium'
# Headless and quiet: a closed network otherwise fills the log with refused connections.
CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]
WAIT_MS = 30_000  # A prediction takes milliseconds; the machine may be busy.
# Strokes in the drawing's own pixels (280x280), as a person draws them.
ONE = [[(150, 40), (146, 120), (142, 240)]]
SEVEN = [[(70, 60), (210, 55), (175, 130), (125, 240)], [(105, 145), (195, 145)]]


@pytest.fixture(scope='module')
def page(trained_mnist_workdir):
  with serving(trained_mnist_workdir) as server, sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={'width': 1100, 'height': 860})
    errors = []
    page.on('pageerror', lambda error: errors.append(str(error)))
    page.goto(server.url)
    yield page
    browser.close()
    assert not errors, errors  # No script error in the whole session.


def draw(page: Page, strokes: list[list[tuple[int, int]]]) -> None:
  """Mouse strokes through the given points of the 280x280 drawing, in small steps."""
  box = page.locator('#pad').bounding_box()
  scale = box['width'] / 280

  def at(point):
    return box['x'] + point[0] * scale, box['y'] + point[1] * scale

  for stroke in strokes:
    page.mouse.move(*at(stroke[0]))
    page.mouse.down()
    for point in stroke[1:]:
      page.mouse.move(*at(point), steps=12)
    page.mouse.up()


def test_drawn_digits_are_read_as_drawn(page, tmp_path):
  answer = page.locator('#answer')
  draw(page, ONE)
  expect(answer).to_have_text('1', timeout=WAIT_MS)
  expect(page.locator('#bars-wrap li')).to_have_count(10)
  page.get_by_role('button', name='Undo').click()
  expect(answer).to_have_text('')
  expect(page.locator('#result')).to_have_attribute('data-state', 'idle')
  draw(page, SEVEN)
  expect(answer).to_have_text('7', timeout=WAIT_MS)
  expect(page.locator('#result')).to_have_attribute('data-state', 'done')
  top = page.locator('#bars-wrap li.top')
  expect(top).to_have_attribute('aria-label', re.compile(r'^7: \d+\.\d%$'))
  seen = page.locator('#inputs img')
  expect(seen).to_have_count(1)
  assert seen.evaluate('image => [image.naturalWidth, image.naturalHeight]') == [28, 28]
  screenshot = tmp_path / 'serve_page.png'
  page.screenshot(path=screenshot, full_page=True)
  assert screenshot.stat().st_size > 10_000
  if os.environ.get('SERVE_SCREENSHOT'):
    shutil.copy(screenshot, ROOT / os.environ['SERVE_SCREENSHOT'])
  page.get_by_role('button', name='Clear').click()
  expect(answer).to_have_text('')


def test_a_photo_is_read(page):
  expect(page.locator('#photo-wrap')).to_be_hidden()
  page.get_by_label('Choose a file').set_input_files(ROOT / 'docs' / 'example_digit.jpg')
  expect(page.locator('#answer')).to_have_text('4', timeout=WAIT_MS)
  expect(page.locator('#photo-wrap')).to_be_visible()
  expect(page.locator('#inputs img')).to_have_count(1)
  expect(page.get_by_label('Take a photo')).to_have_attribute('capture', 'environment')


def test_a_number_shows_with_its_boxes(page):
  """The shape predict gives several digits, {number, digits: [{digit, probability, box}]}."""
  field = io.BytesIO()
  Image.new('L', (28, 28)).save(field, 'PNG')
  blank = 'data:image/png;base64,' + base64.b64encode(field.getvalue()).decode()
  digits = [
    {'digit': 1, 'probability': 0.99, 'box': [20, 40, 100, 240]},
    {'digit': 7, 'probability': 0.98, 'box': [140, 40, 260, 240]},
  ]
  reply = {'number': '17', 'digits': digits, 'inputs': [blank, blank]}
  page.route('**/api/predict*', lambda route: route.fulfill(json=reply))
  try:
    draw(page, ONE)
    expect(page.locator('#answer')).to_have_text('17', timeout=WAIT_MS)
  finally:
    page.unroute('**/api/predict*')
  expect(page.locator('#inputs img')).to_have_count(2)
  expect(page.locator('#confidence')).to_have_text('2 digits, each at least 98.0%')
  # Box outlines: drawn pixels on the overlay along each box's left edge, none elsewhere.
  alpha = page.evaluate(
    """() => {
      const c = document.getElementById('boxes').getContext('2d');
      return [[20, 140], [140, 140], [120, 140], [270, 20]].map(
        ([x, y]) => c.getImageData(x, y, 1, 1).data[3]);
    }"""
  )
  assert alpha[0] > 0 and alpha[1] > 0 and alpha[2] == 0 and alpha[3] == 0, alpha
  page.get_by_role('button', name='Clear').click()
  expect(page.locator('#answer')).to_have_text('')


def test_the_runs_facts_are_shown(page, trained_mnist_workdir):
  lines = (trained_mnist_workdir / 'metrics.jsonl').read_text().splitlines()
  accuracy = json.loads(lines[-1])['test_accuracy']
  facts = page.locator('#facts')
  expect(facts).to_contain_text(f'test accuracy {100 * accuracy:.1f}%')
  expect(facts).to_contain_text('dataset mnist')
  expect(facts).to_contain_text('model mlp (hidden_sizes=(50, 50)')


def test_keyboard_reaches_every_control(page):
  page.locator('body').focus()
  reached = []
  for _ in range(8):
    page.keyboard.press('Tab')
    reached.append(page.evaluate('document.activeElement.id'))
  assert {'pad', 'undo', 'clear', 'file', 'camera'} <= set(reached), reached
  expect(page.get_by_role('img', name=re.compile('Drawing area'))).to_be_visible()


def test_fits_a_phone(page):
  page.set_viewport_size({'width': 360, 'height': 740})
  page.get_by_role('button', name='Clear').click()
  try:
    assert page.evaluate('document.documentElement.scrollWidth') <= 360
    assert page.locator('#pad').bounding_box()['width'] <= 340
    draw(page, ONE)
    expect(page.locator('#answer')).to_have_text('1', timeout=WAIT_MS)
  finally:
    page.set_viewport_size({'width': 1100, 'height': 860})
