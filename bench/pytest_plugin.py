"""pytest plugin of the regression gate (entry point ``pytest11``: ``ip2p_regress``): a user's own
test asserts in one line that a checkpoint passes a golden file.

    def test_my_checkpoint(ip2p_regress):
        ip2p_regress("runs/my-ip2p", suite="bench/suites/smoke.yaml", golden="results/golden/world-ip2p-smoke.json")

The fixture runs ``ip2p regress`` in the test's process (``bench.regress.run_regress``) with its
run folder under the test's temporary directory (``out=`` keeps it elsewhere, e.g. to resume).
A regression fails the test with the verdict table as the message; a run that cannot be judged
(a golden of another measurement, a model that does not load) fails it with the reason. It
returns the report (``bench.regress.GateReport``) when the gate holds.

This module is imported by every pytest session where ip2p-bench is installed: it imports
nothing heavy until the fixture is called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest


def _gate(tmp_path: Path, model: str | Sequence[str] | None, *, suite: str, golden: str | Path,
          out: str | Path | None = None, batch_size: int | None = None, device: str | None = None):
    from bench.regress import run_regress, with_models
    from bench.spec import load_spec

    models = [model] if isinstance(model, (str, Path)) else list(model or [])
    spec = with_models(load_spec(suite), [str(m) for m in models])
    if batch_size is not None:
        spec = spec.model_copy(update={"batch_size": int(batch_size)})
    report = run_regress(spec, golden, out=out or tmp_path / "ip2p-regress", device=device, progress=False,
                         base_dir=Path(suite).parent if Path(suite).exists() else None)
    what = f"{', '.join(models) or 'the suite model'} on suite {spec.name!r} against {golden}"
    if report.exit_code == 1:
        pytest.fail(f"regression: {what}\n{report.table_text()}", pytrace=False)
    if report.exit_code != 0:
        pytest.fail(f"could not gate {what}: {report.message}", pytrace=False)
    return report


@pytest.fixture
def ip2p_regress(tmp_path):
    """``ip2p_regress(model, suite=..., golden=..., out=None, batch_size=None, device=None)``:
    fail the test unless ``model`` (a source, or ``LABEL=SOURCE`` strings; None = the suite's own)
    holds against ``golden`` on ``suite``; returns the gate's report."""

    def check(model=None, *, suite, golden, out=None, batch_size=None, device=None):
        return _gate(tmp_path, model, suite=suite, golden=golden, out=out, batch_size=batch_size, device=device)

    return check
