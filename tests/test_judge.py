"""Judge metrics (ip2p.metrics.judge): published rubrics, a scripted OpenAI-compatible endpoint that
fails in every way, a tiny real vision-language model through the local backend, and a sweep killed
mid-judging that resumes without asking again."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ip2p.metrics.judge import EndpointBackend, JudgeMetric, load_rubric, missing_by_reason, parse, queries
from tests.judge_fixtures import ScriptedChat, build_tiny_qwen2vl

REPO = Path(__file__).resolve().parents[1]
MARKS = ["ok", "sorry", "refuse", "filtered", "badjson", "garbage", "429", "500", "hang", "flaky", "empty", "400"]


def test_rubrics_are_the_published_prompts_with_their_sources():
    for name in ("viescore", "gedit", "imgedit"):
        r = load_rubric(name)
        for src in r["source"]:
            assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and src["repo"] and src["path"]
    sc, pq = queries("viescore", "make the sky green")
    assert "Editing instruction: make the sky green" in sc.prompt and "<instruction>" not in sc.prompt
    assert sc.images == ("input", "output") and pq.images == ("output",)
    assert sc.prompt.startswith("You are a professional digital artist.") and "overediting" in sc.prompt
    assert [q.prompt for q in queries("gedit", "x")] == [q.prompt for q in queries("viescore", "x")]  # GEdit reuses them
    (q,) = queries("imgedit", "remove the cat", "remove")
    assert "object removal" in q.prompt and "editing instruction is : remove the cat." in q.prompt
    assert "attribute alteration" in queries("imgedit", "x", "attribute-colour")[0].prompt
    assert "hybrid image edits" in queries("imgedit", "x", None)[0].prompt  # the default type


def test_answer_parsing_as_published_and_no_guessing():
    assert parse("viescore", "sc", '||V^=^V||\n{"score": [3, 8], "reasoning": "x"}\n||V^=^V||') == [3.0, 8.0]
    assert parse("viescore", "sc", "Sure: {\n\"score\" : [6, 0],\n\"reasoning\" : \"r\"\n}") == [6.0, 0.0]
    assert parse("viescore", "sc", "[6, 0]") == [6.0, 0.0] and parse("viescore", "pq", "7") == [7.0]
    for bad in ("I cannot rate this.", '{"score": [11, 2]}', '{"score": "high"}', '{"score": [7,'):
        assert parse("viescore", "sc", bad) is None, bad
    assert parse("imgedit", "judge", "Brief reasoning: ok\nPrompt Compliance: 4\nVisual Naturalness: 2\n"
                                     "Physical & Detail Integrity: 3") == [4.0, 2.0, 3.0]
    assert parse("imgedit", "judge", "Prompt Compliance: 4\nVisual Naturalness: 9") is None


def _edits(n: int):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)


def _metric(url, cache, **kw):
    backend = EndpointBackend(url, "judge-test", timeout_s=0.3, max_retries=2, backoff_s=0.01,
                              max_concurrency=kw.pop("max_concurrency", 4), api_key_env="IP2P_TEST_JUDGE_KEY")
    return JudgeMetric(backend, ["imgedit", "viescore"], cache=cache, **kw)


def test_endpoint_failures_are_missing_counted_and_a_rerun_asks_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("IP2P_TEST_JUDGE_KEY", "sk-test")
    inputs, outputs = _edits(len(MARKS))
    instr = [f"make it mark-{m}" for m in MARKS]
    with ScriptedChat(hang_s=1.0) as srv:
        rows = _metric(srv.url, tmp_path / "answers.sqlite")(inputs, outputs, instr, ["remove"] * len(MARKS))
        by = dict(zip(MARKS, rows))
        ok = by["ok"]
        assert (ok["imgedit_adherence"], ok["imgedit_quality"], ok["imgedit_detail"], ok["imgedit_overall"]) == (4, 3, 5, 4)
        assert (ok["viescore_sc"], ok["viescore_pq"]) == (7, 6) and ok["viescore_o"] == pytest.approx(math.sqrt(42))
        assert by["flaky"]["imgedit_overall"] == 4  # a 429 then an answer: retried, answered
        expected = {"sorry": "refused", "refuse": "refused", "filtered": "refused", "badjson": "unparseable", "garbage": "malformed_response",
                    "429": "rate_limited", "500": "server_error", "hang": "timeout", "empty": "empty", "400": "http_error"}
        for mark, reason in expected.items():
            r = by[mark]
            assert f"imgedit.judge={reason}" in r["judge_status"] and f"viescore.sc={reason}" in r["judge_status"], mark
            for col in ("imgedit_adherence", "imgedit_overall", "viescore_sc", "viescore_o"):
                assert math.isnan(r[col]), (mark, col)  # missing, never 0
            assert r["viescore_pq"] == 6  # the PQ query names no instruction: answered
        counts = missing_by_reason([r["judge_status"] for r in rows])
        assert counts == {"refused": 6, "unparseable": 2, "malformed_response": 2, "rate_limited": 2,
                          "server_error": 2, "timeout": 2, "empty": 2, "http_error": 2}
        # retries stop where declared: 1 + max_retries attempts for retried failures, 1 for the rest
        assert srv.counts["429"] == srv.counts["500"] == srv.counts["hang"] == 2 * 3
        assert srv.counts["400"] == 2 and srv.counts["refuse"] == 2 and srv.counts["flaky"] == 3
        assert srv.last_auth == "Bearer sk-test"
        rec = {(x["rubric"], x["part"]): x for x in json.loads(ok["judge_record"])}
        sc = rec[("viescore", "sc")]
        assert sc["reported_model"] == "judge-test-2025" and sc["fingerprint"] == "fp_test_1"
        assert sc["sampling"] == {"max_tokens": 1400} and sc["raw"].startswith("{") and not sc["cached"]
        assert sc["judge"]["model"] == "judge-test" and len(sc["prompt_hash"]) == 16
        total = srv.counts["total"]
        again = _metric(srv.url, tmp_path / "answers.sqlite")(inputs, outputs, instr, ["remove"] * len(MARKS))
        assert srv.counts["total"] == total  # a rerun asks nothing, failures included
        assert [r["judge_status"] for r in again] == [r["judge_status"] for r in rows]
        assert all(x["cached"] for r in again for x in json.loads(r["judge_record"]))
        # asked to, it retries only what failed
        _metric(srv.url, tmp_path / "answers.sqlite", retry_failed=True)(inputs, outputs, instr, ["remove"] * len(MARKS))
        assert srv.counts["total"] > total and srv.counts["flaky"] == 3 and srv.counts["400"] == 4


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2vl")


def test_local_backend_tiny_qwen2vl_answers_with_provenance_and_caches(tiny_vlm, tmp_path):
    from ip2p.metrics.judge import LocalBackend
    from ip2p.util.hashing import hash_folder
    from ip2p.data.world.examples import make_example

    backend = LocalBackend(str(tiny_vlm))
    calls = []
    generate = backend.model.generate
    backend.model.generate = lambda **kw: (calls.append(1), generate(**kw))[1]
    exs = [make_example("test", i) for i in range(2)]
    x = torch.stack([e.input_image for e in exs])
    y = torch.stack([e.target_image for e in exs])
    judge = JudgeMetric(backend, ["viescore"], cache=tmp_path / "a.sqlite", sampling={"max_new_tokens": 6})
    rows = judge(x, y, [e.instruction for e in exs], [e.category for e in exs])
    assert len(calls) == 4  # SC and PQ of two edits
    for r in rows:
        recs = json.loads(r["judge_record"])
        for rec in recs:
            assert rec["judge"]["revision"] == hash_folder(tiny_vlm) and rec["judge"]["class"] == "Qwen2VLForConditionalGeneration"
            assert rec["sampling"] == {"do_sample": False, "max_new_tokens": 6} and isinstance(rec["raw"], str)
            if rec["status"] == "unparseable":  # a random model's bytes: missing, never 0
                assert rec["scores"] is None
        sc_status = recs[0]["status"]
        assert sc_status in ("ok", "unparseable", "empty") and (sc_status == "ok") == (r["viescore_sc"] == r["viescore_sc"])
    # the answer is the model's greedy decoding: the same again, and a rerun asks the model nothing
    (sc, _) = queries("viescore", exs[0].instruction)
    u8 = lambda t: (t * 255).round().to(torch.uint8)
    assert backend.ask(sc.prompt, [u8(x[0]), u8(y[0])], {"do_sample": False, "max_new_tokens": 6}).text == \
        json.loads(rows[0]["judge_record"])[0]["raw"]
    n = len(calls)
    JudgeMetric(backend, ["viescore"], cache=tmp_path / "a.sqlite", sampling={"max_new_tokens": 6})(
        x, y, [e.instruction for e in exs], [e.category for e in exs])
    assert len(calls) == n


def _spec(tmp_path, url, model="judge-test", rubrics=("imgedit",), concurrency=4):
    return {"name": "judged", "dataset": {"kind": "world", "split": "test", "limit": 3},
            "methods": [{"name": "identity"}, {"name": "oracle"}],
            "metrics": {"compute": ["pixel", "success", "judge"],
                        "judge": {"backend": "endpoint", "base_url": url, "model": model, "rubrics": list(rubrics),
                                  "timeout_s": 5, "max_retries": 0, "backoff_s": 0.01,
                                  "max_concurrency": concurrency}},
            "device": "cpu", "batch_size": 3}


@pytest.mark.slow
def test_sweep_killed_mid_judging_resumes_without_asking_again(tmp_path):
    from bench.store import load_results

    with ScriptedChat() as srv:
        spec_path = tmp_path / "judged.yaml"
        # one request at a time: a kill then loses no answer in flight (with more, the answers in
        # flight at the kill are asked again; every stored one never is)
        spec_path.write_text(yaml.safe_dump(_spec(tmp_path, srv.url, concurrency=1)))
        run = tmp_path / "run"
        cmd = [sys.executable, "-m", "ip2p.cli", "sweep", str(spec_path), "--out", str(run), "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "IP2P_JUDGE_KILL_AFTER": "answer:2"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert srv.counts["total"] == 2
        env.pop("IP2P_JUDGE_KILL_AFTER")
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert srv.counts["total"] == 6  # 2 methods x 3 items, each asked once over both runs
        df = load_results(run)
        assert len(df) == 6 and (df["imgedit_overall"] == 4).all()
        assert df["judge_status"].str.fullmatch("imgedit.judge=ok").all()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0 and srv.counts["total"] == 6


def test_a_judge_joins_a_spec_and_the_aggregate_counts_missing_per_reason(tmp_path):
    from bench.aggregate import aggregate
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep
    from ip2p.errors import SpecError

    with ScriptedChat() as srv:
        spec = parse_spec(_spec(tmp_path, srv.url, model="mark-refuse", rubrics=("imgedit", "viescore")))
        run_sweep(spec, tmp_path / "run", progress=False)
        df = load_results(tmp_path / "run")
        assert df["imgedit_overall"].isna().all() and df["viescore_o"].isna().all()
        assert (df["viescore_pq"].isna()).all()  # every query refused: missing, never 0
        agg = aggregate(df, n_boot=50)
        overall = agg[agg["category"] == "(all)"]
        assert (overall["judge_missing_refused"] == 3 * 3).all()  # 3 items x 3 queries per setting
        assert "judge" in json.loads(df["metric_spec"].iloc[0])
    with pytest.raises(SpecError, match="metrics.judge.base_url"):
        bad = _spec(tmp_path, None)
        parse_spec(bad)
    plain = _spec(tmp_path, "http://x/v1")
    plain["metrics"]["compute"] = ["pixel"]
    assert parse_spec(plain).fingerprint() == parse_spec({**plain, "metrics": {"compute": ["pixel"]}}).fingerprint()


def test_an_unreachable_endpoint_is_failed_after_the_declared_retries(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = EndpointBackend(f"http://127.0.0.1:{port}/v1", "m", timeout_s=1, max_retries=1, backoff_s=0.01)
    (row,) = JudgeMetric(backend, ["imgedit"], cache=tmp_path / "c.sqlite")(*_edits(1), ["add a cat"])
    rec = json.loads(row["judge_record"])[0]
    assert rec["status"] == "failed" and rec["attempts"] == 2 and math.isnan(row["imgedit_overall"])
