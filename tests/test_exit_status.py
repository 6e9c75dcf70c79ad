"""Exit statuses a CI can trust: Ctrl-C (SIGINT) ends every command with status 130 and one line,
never 0; the regression gate never passes having compared nothing (a damaged golden: values NaN,
null, Infinity or missing, a column removed from its list, no units) -- exit 2, "could not run".
The interrupt cases run `python -m ip2p.cli ...` in their own process and send it a real SIGINT."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bench.regress import EXIT_COULD_NOT_RUN, judge, run_regress
from bench.spec import GateSpec, parse_spec
from bench.testing import tiny_spec
from ip2p.errors import SpecError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT's default action, as a command typed at a terminal has. A test run
    started in the background by a non-interactive shell (``make test &``) inherits SIGINT *ignored*, and
    an ignored signal stays ignored across exec: Python then installs no KeyboardInterrupt handler and
    the SIGINT these tests send would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ip2p.cli", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal)


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> tuple[int, str]:
    """SIGINT to ``proc`` once ``ready()`` holds (or it ended); (exit status, stderr)."""
    try:
        t0 = time.time()
        while not ready() and proc.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.05)
        assert proc.poll() is None, f"ended before the interrupt: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err
    finally:  # a failed case (a hang after the interrupt included) leaves no command running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _one_interrupt_line(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted (SIGINT)"), err
    assert sum("interrupted" in ln for ln in lines) == 1, err


def _slow_spec(tmp_path: Path) -> Path:
    s = tiny_spec(None, items=8, batch_size=1)
    s["methods"][0]["knobs"]["num_inference_steps"] = 40
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def test_ctrl_c_in_a_sweep_exits_130_with_one_line(tmp_path):
    spec = _slow_spec(tmp_path)
    proc = _start(["sweep", str(spec), "--out", str(tmp_path / "run"), "--no-progress"], tmp_path)
    rc, err = _interrupt_when(proc, lambda: (tmp_path / "run" / "units.json").exists())
    assert rc == 130
    _one_interrupt_line(err)


def test_ctrl_c_in_regress_exits_130_and_reports_interrupted(tmp_path):
    spec = _slow_spec(tmp_path)
    run = tmp_path / "run"
    proc = _start(["regress", "--suite", str(spec), "--golden", str(tmp_path / "g.json"), "--update-golden",
                   "--out", str(run), "--no-progress"], tmp_path)
    rc, err = _interrupt_when(proc, lambda: (run / "units.json").exists())
    assert rc == 130
    _one_interrupt_line(err)
    assert not (tmp_path / "g.json").exists()
    report = json.loads((run / "regress.json").read_text())
    assert report["status"] == "interrupted" and report["exit_code"] == 130
    assert "errors=\"1\"" in (run / "regress.junit.xml").read_text()


def _loading_torch(pid: int) -> bool:
    """True once torch's library is mapped into the process: the commands are loading (importing
    torch takes seconds), and no command has started. A fixed delay cannot say this on a loaded
    machine: there 0.5 s can still be Python's own start-up."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # no /proc (not Linux): the process has at least started
        return True


@pytest.mark.parametrize("when", ["loading", "running"])  # while the commands load, and while the model runs
def test_ctrl_c_in_edit_exits_130_with_one_line(tmp_path, when):
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "in.png")
    proc = _start(["edit", "in.png", "-i", "make it red", "--model", "tiny", "--steps", "5000", "--device", "cpu"],
                  tmp_path)
    t0 = time.time()
    ready = (lambda: _loading_torch(proc.pid)) if when == "loading" else (lambda: time.time() - t0 > 6.0)
    rc, err = _interrupt_when(proc, ready)
    assert rc == 130
    _one_interrupt_line(err)
    assert not (tmp_path / "in_edited.png").exists()


def test_an_exit_status_a_command_returns_is_kept(tmp_path):
    """``typer.Exit(3)`` comes back from ``app()`` as a value under standalone_mode=False: kept."""
    code = ("import sys, typer\nfrom ip2p import cli\n"
            "@cli.app.command('fail3')\ndef fail3():\n    raise typer.Exit(3)\n"
            "sys.argv = ['ip2p', 'fail3']\ncli.main()\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stderr


# ---- the gate never passes having compared nothing -------------------------------------------

def _golden_and_rows(n_items=12):
    rng = np.random.default_rng(0)
    units, rows = [], []
    for i in range(n_items):
        vals = {"target_l1": float(rng.uniform(0.05, 0.2)), "l1": float(rng.uniform(0.05, 0.2))}
        units.append({"method": "m", "knobs": '{"s":1}', "item_id": f"i{i:02d}", "seed": 0, "values": vals})
        rows.append({"method": "m", "knobs": '{"s":1}', "item_id": f"i{i:02d}", "seed": 0, **vals})
    return {"columns": ["target_l1", "l1"], "units": units}, pd.DataFrame(rows)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None, "0.1", True, "absent"])
def test_a_damaged_golden_value_is_refused(bad):
    golden, rows = _golden_and_rows()
    assert {v.status for v in judge(golden, rows, GateSpec())} == {"ok"}
    for u in golden["units"]:  # every unit damaged: before the fix the gate said n=0 ... ok
        if bad == "absent":
            del u["values"]["l1"]
        else:
            u["values"]["l1"] = bad
    with pytest.raises(SpecError, match=r"golden units\[0\].*'l1'"):
        judge(golden, rows, GateSpec())


def test_a_column_removed_from_the_golden_still_gates():
    golden, rows = _golden_and_rows()
    golden["columns"] = ["target_l1"]
    for u in golden["units"]:
        del u["values"]["l1"]
    with pytest.raises(SpecError, match=r"column list lacks \['l1'\]"):
        judge(golden, rows, GateSpec())


def test_a_golden_without_units_is_refused():
    golden, rows = _golden_and_rows()
    golden["units"] = []
    with pytest.raises(SpecError, match="holds no units"):
        judge(golden, rows, GateSpec())


def test_a_comparison_of_no_items_is_refused():
    golden, rows = _golden_and_rows()
    for u in golden["units"]:
        u["values"]["l1"] = None
    rows["l1"] = np.nan  # neither side has a value: the comparison would be empty
    with pytest.raises(SpecError, match="paired no item"):
        judge(golden, rows, GateSpec())


def test_regress_exits_2_on_a_golden_with_nan_values(tmp_path):
    spec = parse_spec(tiny_spec(None, items=2))
    golden = tmp_path / "g.json"
    made = run_regress(spec, golden, out=tmp_path / "run", update_golden=True, progress=False)
    assert made.exit_code == 0, made.message
    doc = json.loads(golden.read_text())
    damaged = copy.deepcopy(doc)
    for u in damaged["units"]:
        u["values"] = {k: float("nan") for k in u["values"]}
    golden.write_text(json.dumps(damaged))  # json writes NaN literals, as a hand edit could
    rep = run_regress(spec, golden, out=tmp_path / "run", progress=False)
    assert rep.exit_code == EXIT_COULD_NOT_RUN and "not a finite number" in rep.message
    doc["columns"] = doc["columns"][:1]
    golden.write_text(json.dumps(doc))
    rep = run_regress(spec, golden, out=tmp_path / "run", progress=False)
    assert rep.exit_code == EXIT_COULD_NOT_RUN and "column list lacks" in rep.message


@pytest.mark.parametrize("entry", [["-m", "ip2p"], ["-m", "ip2p.cli"]])
def test_version_through_each_entry_point(tmp_path, entry):
    """`ip2p --version` prints the package's version and exits 0 (no command needed)."""
    from ip2p import __version__

    r = subprocess.run([sys.executable, *entry, "--version"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == __version__


def test_a_ctrl_c_that_lands_in_a_finaliser_still_ends_the_command(tmp_path):
    """Python swallows an exception raised in a finaliser (a ``__del__``; the ``regex`` module's runs
    while the tokenizer loads) with an "Exception ignored" message and goes on: a Ctrl-C landing
    there would leave the command running. The entry point's guard ends it: one line, status 130."""
    code = (
        "import time\n"
        "import ip2p.cli\n"
        "class Finaliser:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt  # the Ctrl-C, delivered while the finaliser runs\n"
        "def command():\n"
        "    Finaliser()\n"
        "    time.sleep(20)\n"
        "    print('went on')\n"
        "ip2p.cli.main = command\n"
        "from ip2p.launch import run\n"
        "run()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr)
    _one_interrupt_line(r.stderr)
    assert "went on" not in r.stdout
