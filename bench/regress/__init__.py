"""The regression gate: run a suite on a model and judge it against a golden file, item by item.

A golden file holds one model's per-item metric values on a suite, with everything that defines
the measurement (items and their content hashes, seeds, knob settings, the metric spec) and
the spec, versions and weights hash that made it. ``ip2p regress`` then:

    refuse  when this run's measurement differs from the golden's (exit 2, the difference named;
            nothing is compared). A different model is not a different measurement: judging
            another checkpoint is the point, so both weights hashes are recorded, never refused.
            Library versions (the metric spec's ``library`` fields, torch, diffusers) are not the
            measurement either: differences are noted beside the verdicts.
    run     the suite through the sweep (resumable and sharded like any sweep)
    pair    each unit (method, knobs, item, seed) with the golden's
    judge   per setting and gated metric, the worsening of each item, and the bootstrap interval
            of its mean over items against the metric's tolerance
    report  a table, a JSON report and JUnit XML; exit 0 when the gate holds, 1 on a regression.

The same model run again gives the golden's rows: bit for bit with any process count (batches are
cut from the spec alone), up to float rounding with another batch size (batched matrix products
round differently; an 8-bit pixel steps now and then), far below every tolerance.

One concept per module: the golden format and the measurement (``bench.regress.golden``), the
verdicts (``bench.regress.verdicts``), the report and its JSON and JUnit forms
(``bench.regress.report``), the run that ties them together (``bench.regress.gate``) and the
command (``bench.regress.cli``). The names below are the package's API.
"""
from __future__ import annotations

from bench.regress.gate import code_state, default_run_dir, run_regress, with_models  # noqa: F401
from bench.regress.golden import (GOLDEN_FORMAT, build_golden, implementation_differences,  # noqa: F401
                                  item_fingerprint, measurement, measurement_differences, metric_spec_of,
                                  read_golden)
from bench.regress.report import (EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED, EXIT_PASS, EXIT_REGRESSION,  # noqa: F401
                                  REPORT_FORMAT, GateReport)
from bench.regress.verdicts import Verdict, gated_metrics, judge  # noqa: F401
