"""The HTML report of a real (tiny) run, opened in headless Chromium: it loads nothing from
outside, every image decodes (naturalWidth > 0), and its tables hold the run's numbers."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from bench.aggregate import aggregate, knob_label
from bench.report import build_report
from bench.spec import parse_spec
from bench.store import load_results
from bench.sweep import run_sweep
from bench.testing import random_clip_folder, tiny_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute('data-natural-width', String(imgs[i].naturalWidth));
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) bad++;
  }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(bad));
});
</script>"""


class _Cells(HTMLParser):
    """Rows of table#aggregate-all: (data-knobs, {metric: mean text}, n text)."""

    def __init__(self):
        super().__init__()
        self.rows, self._in, self._row, self._cell, self._metric, self._depth = [], False, None, None, None, 0
        self.widths: list[int] = []
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "img":
            self.widths.append(int(a.get("data-natural-width", "-1")))
        if tag == "table" and a.get("id") == "aggregate-all":
            self._in = True
        if not self._in:
            return
        if tag == "tr" and "data-knobs" in a:
            self._row = {"knobs": a["data-knobs"], "method": a["data-method"], "cells": [], "metrics": {}}
        if tag == "td" and self._row is not None:
            self._cell, self._metric = "", a.get("data-metric")

    def handle_endtag(self, tag):
        if tag == "table" and self._in:
            self._in = False
        if self._in and tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(self._cell)
            if self._metric:
                self._row["metrics"][self._metric] = self._cell.split("[")[0].strip()
            self._cell = None
        if self._in and tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    clip = random_clip_folder(root / "clip")
    run = root / "run"
    run_sweep(parse_spec(tiny_spec(clip)), run, progress=False)
    return run


def test_report_is_self_contained(run):
    out = build_report(run, n_items=3)
    text = out.read_text()
    srcs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert "<link" not in text and "@import" not in text and "url(" not in text
    df = load_results(run)
    # the grid shows the 3 inputs, 4 outputs each and the 3 targets, and the figure
    assert text.count("<img") == 3 + 3 * 4 + 3 + 1
    assert html.escape(df["instruction"].iloc[0]) in text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test-deps.sh installs it)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    out = build_report(run, tmp_path / "report.html", n_items=3)
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = _Cells()
    p.feed(proc.stdout)
    assert p.body.get("data-broken-images") == "0", p.body
    assert int(p.body["data-images"]) == 3 + 3 * 4 + 3 + 1 == len(p.widths)
    assert min(p.widths) > 0
    # the aggregate table holds the run's numbers, recomputed here from the stored rows
    agg = aggregate(load_results(run))
    expect = agg[agg["category"] == "(all)"]
    assert len(p.rows) == len(expect) == 4
    for row, (_, e) in zip(p.rows, expect.iterrows()):
        assert (row["method"], row["knobs"]) == (e["method"], e["knobs"])
        assert row["cells"][1].strip() == knob_label(e["knobs"], ["guidance_scale", "image_guidance_scale"]) and row["cells"][2].strip() == str(e["n_items"])
        for m in ("clip_sim_direction", "clip_sim_image", "l1", "psnr", "target_l1", "masked_l1_outside"):
            assert row["metrics"][m] == f"{e[f'{m}_mean']:.4f}", m
