"""The rule "no function over 60 lines outside tests", checked with ``scripts/long_functions.py``:
every longer function is listed in its ``EXCEPTIONS`` with a reason, and no exception is stale."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("long_functions", ROOT / "scripts" / "long_functions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_long_function_is_an_exception_with_a_reason():
    tool = _tool()
    found = tool.long_functions()
    assert not sorted(set(found) - set(tool.EXCEPTIONS)), "functions over 60 lines without a listed reason"
    assert not sorted(set(tool.EXCEPTIONS) - set(found)), "stale exceptions: remove them from the list"
    assert all(why.strip() for why in tool.EXCEPTIONS.values())


def test_the_counter_measures_def_spans(tmp_path):
    tool = _tool()
    (tmp_path / "ip2p").mkdir()
    lines = [f"x{i} = {i}" for i in range(61)] + ["return 0"]
    method = "\n".join("        " + ln for ln in lines)
    func = "\n".join("    " + ln for ln in lines)
    (tmp_path / "ip2p" / "m.py").write_text(f"class C:\n    def long(self):\n{method}\n\n\ndef short():\n    return 1\n")
    (tmp_path / "ip2p" / "test_x.py").write_text(f"def long():\n{func}\n")  # tests are left out
    assert tool.long_functions(tmp_path) == {"ip2p/m.py::C.long": 63}
