"""Reports of the regression gate: what one ``ip2p regress`` run concluded (``GateReport``), its
exit status, and its forms: a rich table with a headline, a JSON document (``REPORT_FORMAT``) and
JUnit XML (one testcase per comparison, a failure per regression, an error when it could not run)."""
from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.regress.verdicts import Verdict

REPORT_FORMAT = "ip2p-bench regress report 1"
EXIT_PASS, EXIT_REGRESSION, EXIT_COULD_NOT_RUN = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): the gate did not judge


@dataclass
class GateReport:
    """What one ``ip2p regress`` run concluded. ``exit_code``: 0 holds, 1 regression, 2 could not run."""

    status: str  # "pass" | "regression" | "refused" | "error" | "interrupted" | "golden-written" | "rank-done"
    exit_code: int
    suite: str
    golden: str
    run_dir: str | None = None
    message: str = ""
    level: float = 0.95
    verdicts: list[Verdict] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)  # {"golden": {label: identity}, "now": {...}}
    notes: list[str] = field(default_factory=list)  # implementation versions that differ from the golden's
    seconds: float = 0.0

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "regressed"]

    def headline(self) -> str:
        if self.status == "pass":
            return (f"gate holds: {len(self.verdicts)} comparisons against {self.golden}, none worse beyond its "
                    f"tolerance ({self._hashes()})")
        if self.status == "regression":
            worst = ", ".join(f"{v.metric} [{v.setting}]" for v in self.regressions[:4])
            more = len(self.regressions) - 4
            return (f"REGRESSION: {len(self.regressions)} of {len(self.verdicts)} comparisons worse than {self.golden}"
                    f" beyond tolerance: {worst}{f' and {more} more' if more > 0 else ''} ({self._hashes()})")
        return self.message

    def _hashes(self) -> str:
        g = {k: v.get("weights_hash") for k, v in self.models.get("golden", {}).items()}
        n = {k: v.get("weights_hash") for k, v in self.models.get("now", {}).items()}
        parts = []
        for label in n:
            same = " (same weights)" if g.get(label) == n[label] else ""
            parts.append(f"{label}: weights {n[label]} vs golden {g.get(label)}{same}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        from ip2p.util.provenance import now_iso

        d = {k: v for k, v in asdict(self).items() if k != "verdicts"}
        d.update({"format": REPORT_FORMAT, "written": now_iso(), "headline": self.headline(),
                  "verdicts": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in asdict(x).items()} for x in self.verdicts]})
        return d

    def render(self, console) -> None:
        """The verdict table (regressions first) and the headline, on a rich console."""
        from rich.table import Table

        if self.verdicts:
            pct = f"{self.level * 100:g}%"
            several = len({v.method for v in self.verdicts}) > 1
            t = Table(title=f"{self.suite} vs golden: worsening per item (> 0 = worse), mean [{pct} bootstrap interval]")
            names = (["method"] if several else []) + ["setting", "metric", "golden", "now", "worse", "tol", "n",
                                                        "status"]
            for name in names:
                t.add_column(name, justify="left" if name in ("method", "setting", "metric", "status") else "right")
            order = {"regressed": 0, "improved": 1, "ok": 2}
            for v in sorted(self.verdicts, key=lambda v: order[v.status]):
                style = {"regressed": "bold red", "improved": "green"}.get(v.status)
                arrow = {"higher": "(higher better)", "lower": "(lower better)"}.get(v.better, "")
                cells = ([v.method] if several else []) + [
                    v.setting, f"{v.metric} {arrow}", f"{v.golden_mean:.4f}", f"{v.new_mean:.4f}",
                    f"{v.worse_mean:+.4f} [{v.worse_lo:+.4f}, {v.worse_hi:+.4f}]", f"{v.tolerance:g}",
                    str(v.n_items), v.status.upper() if v.status == "regressed" else v.status]
                t.add_row(*cells, style=style)
            console.print(t)
        if self.notes:
            console.print("versions differ from the golden's (informational): " + "; ".join(self.notes), soft_wrap=True)
        console.print(self.headline(), style="bold red" if self.exit_code else None, soft_wrap=True)

    def table_text(self, width: int = 140) -> str:
        """The table and headline as plain text (for failure messages and logs)."""
        from rich.console import Console

        buf = io.StringIO()
        self.render(Console(file=buf, width=width, color_system=None, force_terminal=False))
        return buf.getvalue()

    def junit_xml(self) -> str:
        """JUnit XML: one testcase per comparison (a failure per regression), or one error
        testcase when the gate could not run."""
        import socket

        from ip2p.util.provenance import now_iso

        cases = []
        for v in self.verdicts:
            case = ET.Element("testcase", classname=f"ip2p_regress.{self.suite}.{v.method}",
                              name=f"{v.metric} [{v.setting}]", time="0")
            if v.status == "regressed":
                fail = ET.SubElement(case, "failure", message=v.why, type="regression")
                fail.text = (f"{v.metric} ({v.better} is better) at {v.setting}: golden {v.golden_mean:.6g}, now "
                             f"{v.new_mean:.6g}; {v.why} over {v.n_items} paired items")
            cases.append(case)
        if self.exit_code in (EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED):
            case = ET.Element("testcase", classname=f"ip2p_regress.{self.suite}", name="measurement", time="0")
            ET.SubElement(case, "error", message=self.message, type=self.status).text = self.message
            cases.append(case)
        failures = sum(1 for v in self.verdicts if v.status == "regressed")
        errors = int(self.exit_code in (EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED))
        root = ET.Element("testsuites", name="ip2p regress", tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), time=f"{self.seconds:.3f}")
        suite = ET.SubElement(root, "testsuite", name=f"ip2p_regress.{self.suite}", tests=str(len(cases)),
                              failures=str(failures), errors=str(errors), skipped="0", time=f"{self.seconds:.3f}",
                              timestamp=now_iso(), hostname=socket.gethostname())
        props = ET.SubElement(suite, "properties")
        prop = {"golden": self.golden, "status": self.status, "run_dir": self.run_dir or ""}
        if self.notes:
            prop["versions_differ"] = "; ".join(self.notes)
        for side in ("golden", "now"):
            for label, ident in self.models.get(side, {}).items():
                prop[f"{side}.{label}.weights_hash"] = str(ident.get("weights_hash"))
                prop[f"{side}.{label}.source"] = str(ident.get("source"))
        for k, v in prop.items():
            ET.SubElement(props, "property", name=k, value=v)
        suite.extend(cases)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

    def write(self, json_path: str | Path | None, junit_path: str | Path | None) -> None:
        from ip2p.util.io import atomic_write_json, atomic_write_text

        if json_path:
            atomic_write_json(json_path, self.to_dict())
        if junit_path:
            atomic_write_text(junit_path, self.junit_xml())
