"""docs/reliability.md: its claim -> test tables are what tests/claims.py writes from the tests'
claim markers, every row has a test, and every marker names a row."""

from __future__ import annotations

import claims


def test_the_reliability_tables_are_written_from_the_claim_markers():
  with open(claims.DOC) as f:
    doc = f.read()
  found = claims.collect()
  assert claims.render(doc, found) == doc, "run `python tests/claims.py` to write the test columns"
  rows = claims.rows(doc)
  assert not rows - set(found), f"rows without a test: {sorted(map(str, rows - set(found)))}"
  assert not set(found) - rows, f"claim markers naming no row: {sorted(map(str, set(found) - rows))}"
