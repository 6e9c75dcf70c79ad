"""A judge as a metric: every edit of a batch asked under each rubric, answers cached by content,
scores with their provenance, failures missing with their reason.

Each result row gets the rubric columns (``viescore_sc``, ... NaN where a needed answer is
missing), ``judge_status`` (``rubric.part=status`` for every query, ``;``-joined: ``ok`` or the
failure reason) and ``judge_record`` (JSON: per query the judge's identity and the model and
fingerprint it reported, the rubric and part, the prompt's hash, the sampling settings, the raw
answer, the attempts and whether it came from the cache).

Every answer is stored as it arrives; with ``max_concurrency`` 1 queries go one at a time, so a
crash loses nothing asked. With more, the answers in flight at a crash (at most that many) are
asked again on resume; a stored answer never is.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import torch

from ip2p.metrics.judge import rubrics as R
from ip2p.metrics.judge.answer_cache import AnswerCache, answer_key
from ip2p.metrics.judge.backends import Answer
from ip2p.util.faults import KillSwitch
from ip2p.util.hashing import hash_tensor

KILL_ENV = "IP2P_JUDGE_KILL_AFTER"  # "answer:N": SIGKILL after the N-th new answer is stored (resume tests)
LOCAL_DEFAULT_SAMPLING = {"do_sample": False, "max_new_tokens": 512}


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


class JudgeMetric:
    """``backend``: an ``EndpointBackend`` or ``LocalBackend``; ``rubrics``: names in
    ``ip2p.metrics.judge.rubrics.RUBRICS``; ``sampling``: overrides of each rubric's published
    settings; ``cache``: an ``AnswerCache``, a file path, or None (in memory); ``retry_failed``:
    ask again queries whose cached outcome is a failure."""

    def __init__(self, backend, rubrics: Sequence[str], *, sampling: dict[str, Any] | None = None,
                 cache: AnswerCache | str | Path | None = None, retry_failed: bool = False):
        self.backend = backend
        self.rubrics = list(rubrics)
        for r in self.rubrics:
            R.load_rubric(r)
        self.overrides = dict(sampling or {})
        self.cache = cache if isinstance(cache, AnswerCache) else AnswerCache(cache)
        self.retry_failed = retry_failed
        self.killer = KillSwitch(KILL_ENV)
        self.requests_made = 0

    def sampling(self, rubric: str) -> dict[str, Any]:
        """The sampling settings of ``rubric`` for this backend: the rubric's published ones (an
        endpoint) or greedy decoding (a local model, ``max_tokens`` as ``max_new_tokens``), then
        the overrides."""
        pub = dict(R.load_rubric(rubric).get("sampling", {}))
        if self.backend.kind == "local":
            base = dict(LOCAL_DEFAULT_SAMPLING)
            if "max_tokens" in pub:
                base["max_new_tokens"] = pub["max_tokens"]
            return {**base, **self.overrides}
        return {**pub, **self.overrides}

    def columns(self) -> list[str]:
        return [c for r in self.rubrics for c in R.columns(r)]

    def spec(self) -> dict[str, Any]:
        return {"judge": self.backend.identity(),
                "rubrics": {r: {"source": R.load_rubric(r)["source"], "parse": R.load_rubric(r)["parse"],
                                "combine": R.load_rubric(r)["combine"], "sampling": self.sampling(r)}
                            for r in self.rubrics},
                "missing": "refused, failed, timed-out or unparseable queries give NaN, counted per reason"}

    def _plan(self, images, instructions, categories):
        """Per edit the (rubric, query, key, image tensors) list, and the distinct keys to ask."""
        ident = self.backend.identity()
        hashes = [{k: hash_tensor(v) for k, v in im.items()} for im in images]
        plan, todo = [], {}
        for i, im in enumerate(images):
            entries = []
            for r in self.rubrics:
                samp = self.sampling(r)
                for q in R.queries(r, instructions[i], categories[i]):
                    key = answer_key(ident, samp, q.prompt, [hashes[i][n] for n in q.images])
                    entries.append((q, key, samp))
                    cached = self.cache.get(key)
                    stale = cached is not None and self.retry_failed and cached["status"] != "ok"
                    if (cached is None or stale) and key not in todo:
                        todo[key] = (q, [im[n] for n in q.images], samp)
            plan.append(entries)
        return plan, todo

    def _ask_all(self, todo: dict) -> None:
        """Ask every planned query (bounded concurrency); each answer is stored as it arrives."""
        if not todo:
            return
        if self.backend.max_concurrency == 1:  # one at a time, in order: nothing in flight at a crash
            for key, (q, imgs, samp) in todo.items():
                self._store(key, self._ask(q, imgs, samp))
            return
        with ThreadPoolExecutor(max_workers=self.backend.max_concurrency) as pool:
            futures = {pool.submit(self._ask, q, imgs, samp): key for key, (q, imgs, samp) in todo.items()}
            for fut in as_completed(futures):
                self._store(futures[fut], fut.result())

    def _ask(self, q, imgs, samp) -> Answer:
        try:
            return self.backend.ask(q.prompt, imgs, samp)
        except Exception as e:  # a backend bug is this query's failure, not the sweep's
            return Answer("failed", detail=f"{type(e).__name__}: {e}"[:500])

    def _store(self, key: str, ans: Answer) -> None:
        self.requests_made += ans.attempts
        self.cache.put(key, ans.record())
        self.killer.tick("answer")

    def __call__(self, inputs: torch.Tensor, outputs: torch.Tensor, instructions: Sequence[str],
                 categories: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """Rows (one per edit) for ``inputs -> outputs`` (float ``[N, 3, H, W]`` in [0, 1])."""
        n = outputs.shape[0]
        if len(instructions) != n:
            raise ValueError(f"instructions: {len(instructions)} for {n} edits; give one per edit")
        categories = list(categories) if categories is not None else [None] * n
        images = [{"input": _u8(inputs[i]), "output": _u8(outputs[i])} for i in range(n)]
        plan, todo = self._plan(images, instructions, categories)
        fresh = set(todo)
        self._ask_all(todo)
        return [self._row(entries, fresh) for entries in plan]

    def _row(self, entries, fresh: set) -> dict[str, Any]:
        parts: dict[str, dict[str, list[float] | None]] = {r: {} for r in self.rubrics}
        status, records = [], []
        for q, key, samp in entries:
            rec = self.cache.get(key) or Answer("failed", detail="answer lost from the cache").record()
            st = rec["status"]
            scores = R.parse(q.rubric, q.part, rec["text"]) if st == "ok" else None
            if st == "ok" and scores is None:
                st = "refused" if R.looks_like_refusal(rec.get("text")) else "unparseable"
            parts[q.rubric][q.part] = scores
            status.append(f"{q.rubric}.{q.part}={st}")
            records.append({"rubric": q.rubric, "part": q.part, "status": st, "raw": rec.get("text"),
                            "judge": self.backend.identity(), "reported_model": rec.get("model"),
                            "fingerprint": rec.get("fingerprint"), "prompt_hash": q.prompt_hash, "sampling": samp,
                            "attempts": rec.get("attempts"), "detail": rec.get("detail"),
                            "cached": key not in fresh, "scores": scores})
        row: dict[str, Any] = {}
        for r in self.rubrics:
            row.update(R.combine(r, parts[r]))
        row["judge_status"] = ";".join(status)
        row["judge_record"] = json.dumps(records, sort_keys=True, default=str)
        return row


def missing_by_reason(statuses: Sequence[str]) -> Counter:
    """Failure reasons counted over ``judge_status`` strings (``ok`` not counted)."""
    c: Counter = Counter()
    for s in statuses:
        if not isinstance(s, str):
            continue
        for part in filter(None, s.split(";")):
            reason = part.split("=", 1)[-1]
            if reason != "ok":
                c[reason] += 1
    return c


__all__ = ["JudgeMetric", "missing_by_reason", "KILL_ENV"]
