"""Metrics of a sweep: a spec's ``metrics`` section -> ``ip2p.metrics.MetricSuite``, per batch.

Built-in groups are computed by ``MetricSuite`` and ``BenchmarkMetrics`` (sharing one CLIP and one
LPIPS); a group a plugin registers with a ``build`` (``ip2p.metrics.groups``) by its own scorer,
its columns and their declared directions recorded in the rows' ``metric_spec``.

The suite is built once per process; its CLIP embeddings are cached by content in the run
folder (``<run>/cache/clip_embeddings.sqlite``), so every distinct input image and caption is
encoded once per run, whatever the number of settings, reruns or processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from bench.spec import MetricsSpec


class Scorer:
    """``score(inputs, outputs, text_0, text_1, targets, masks) -> list of {column: float}``.

    Lists hold one entry per edit (images ``[3, H, W]`` in [0, 1]); ``targets``/``masks`` entries
    may be None. Edits are grouped by size and by which extras they have, so a batch may mix them.
    """

    def __init__(self, metrics: MetricsSpec, device: str = "cpu", cache_dir: str | Path | None = None):
        from ip2p.metrics.suite import MetricSuite

        self.metrics = metrics
        clip = lpips = None
        if "clip" in metrics.compute or "pie" in metrics.compute:
            from ip2p.metrics.clip_similarity import ClipSimilarity

            cache = None
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                cache = str(cache_dir)
            clip = ClipSimilarity(metrics.clip.model, metrics.clip.pretrained, metrics.clip.preprocess,
                                  device=device, cache=cache)
        if "lpips" in metrics.compute:
            from ip2p.metrics.lpips_metric import LPIPS

            lpips = LPIPS(metrics.lpips.net, device=device)
        self.suite = MetricSuite(clip=clip if "clip" in metrics.compute else None,
                                 lpips=lpips if "lpips" in metrics.compute else None,
                                 success="success" in metrics.compute)
        self.benchmark = None
        if any(g in metrics.compute for g in ("dino", "structure", "pie")):
            from ip2p.metrics.benchmark_metrics import BenchmarkMetrics
            from ip2p.metrics.dino import load_dino

            dino = load_dino(metrics.dino.model, device) if "dino" in metrics.compute else None
            structure = None
            if "structure" in metrics.compute:
                structure = dino if (dino is not None and metrics.structure.model == metrics.dino.model) \
                    else load_dino(metrics.structure.model, device)
            st = metrics.structure
            self.benchmark = BenchmarkMetrics(
                dino=dino, dino_options={"resize": metrics.dino.resize, "crop": metrics.dino.crop},
                structure=structure, structure_options={"layer": st.layer, "size": st.size, "max_size": st.max_size,
                                                        "pixel_scale": st.pixel_scale, "antialias": st.antialias},
                pie="pie" in metrics.compute, clip=clip if "pie" in metrics.compute else None,
                lpips=lpips if "pie" in metrics.compute else None)
        self.judge = _build_judge(metrics, device, cache_dir) if "judge" in metrics.compute else None
        self.plugins = _plugin_groups(metrics, device)
        self._spec = None

    def spec(self) -> dict:
        if self._spec is None:
            self._spec = {"groups": list(self.metrics.compute), **self.suite.spec()}
            if self.benchmark is not None:
                self._spec["benchmark"] = self.benchmark.spec()
            if self.judge is not None:
                self._spec["judge"] = self.judge.spec()
            if self.plugins:  # only then: the spec of runs without plugin groups stays as it was
                self._spec["plugin_groups"] = {name: _plugin_spec(name, fn) for name, fn in self.plugins.items()}
        return self._spec

    @torch.no_grad()
    def score(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], text_0: Sequence[str],
              text_1: Sequence[str], targets: Sequence[torch.Tensor | None],
              masks: Sequence[torch.Tensor | None], *, instructions: Sequence[str] | None = None,
              categories: Sequence[str | None] | None = None) -> list[dict[str, float]]:
        use_targets = "target" in self.metrics.compute
        use_masks = "masked" in self.metrics.compute
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(outputs):
            key = (tuple(x.shape), targets[i] is not None, masks[i] is not None)
            groups.setdefault(key, []).append(i)
        rows: list[dict[str, float]] = [{} for _ in outputs]
        for (_, any_t, any_m), idx in groups.items():
            has_t, has_m = use_targets and any_t, use_masks and any_m
            # the suite computes the success columns when it gets targets and masks; they need both
            # even where the target or masked group is off
            alone = "success" in self.metrics.compute and any_t and any_m and not (has_t and has_m)
            t0 = [text_0[i] for i in idx]
            t1 = [text_1[i] for i in idx]
            # captions always go in: an item without one gets NaN text metrics (named in
            # ``missing_metrics``), never a similarity to the empty string nor an absent column
            x_in, x_out = torch.stack([inputs[i] for i in idx]), torch.stack([outputs[i] for i in idx])
            tg = torch.stack([targets[i] for i in idx]) if has_t else None
            mk = torch.stack([masks[i] for i in idx]) if has_m else None
            cols = self.suite(x_in, x_out, t0, t1, targets=tg, masks=mk)
            if alone:
                from ip2p.metrics.success import edit_success

                cols.update(edit_success(x_in, x_out, torch.stack([targets[i] for i in idx]),
                                         torch.stack([masks[i] for i in idx])))
            if self.benchmark is not None:
                tb = torch.stack([targets[i] for i in idx]) if any_t else None
                mb = torch.stack([masks[i] for i in idx]) if any_m else None
                cols.update(self.benchmark(x_in, x_out, t1, targets=tb, masks=mb))
            judged = self._judge(x_in, x_out, idx, instructions, categories)
            for fn in self.plugins.values():
                tb = torch.stack([targets[i] for i in idx]) if any_t else None
                mb = torch.stack([masks[i] for i in idx]) if any_m else None
                cols.update({k: torch.as_tensor(v).float().cpu() for k, v in fn(x_in, x_out, t0, t1, targets=tb, masks=mb).items()})
            for j, i in enumerate(idx):
                rows[i] = {k: float(v[j]) for k, v in cols.items()}
                rows[i].update(judged[j])
                rows[i]["missing_metrics"] = ",".join(sorted(k for k, v in rows[i].items() if v != v))
        return rows

    def _judge(self, x_in, x_out, idx, instructions, categories) -> list[dict]:
        """The judge's rows for the edits ``idx`` (empty dicts without a judge)."""
        if self.judge is None:
            return [{} for _ in idx]
        if instructions is None:
            raise ValueError("instructions: the judge metric needs each edit's instruction")
        return self.judge(x_in, x_out, [instructions[i] for i in idx],
                          None if categories is None else [categories[i] for i in idx])


def _build_judge(metrics: MetricsSpec, device: str, cache_dir: str | Path | None):
    """The spec's judge (``ip2p.metrics.judge``), its answers cached in ``cache_dir`` when given."""
    from ip2p.metrics.judge import EndpointBackend, JudgeMetric, LocalBackend

    j = metrics.judge
    if j.backend == "endpoint":
        backend = EndpointBackend(j.base_url, j.model, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                                  max_retries=j.max_retries, backoff_s=j.backoff_s, max_backoff_s=j.max_backoff_s,
                                  max_concurrency=j.max_concurrency)
    else:
        backend = LocalBackend(j.model, device=device, revision=j.revision)
    cache = None if cache_dir is None else Path(cache_dir) / "judge_answers.sqlite"
    return JudgeMetric(backend, j.rubrics, sampling=j.sampling, cache=cache, retry_failed=j.retry_failed)

def _plugin_groups(metrics: MetricsSpec, device: str) -> dict:
    """The scorers of the spec's groups that a plugin registered with a ``build`` (``ip2p.metrics.groups``)."""
    from ip2p.metrics.groups import get_metric_group

    out = {}
    for name in metrics.compute:
        group = get_metric_group(name)
        if group.build is not None:
            out[name] = group.build(metrics, device)
    return out


def _plugin_spec(name: str, fn) -> dict:
    """What a plugin group computes with: its columns' directions and tolerances, and its own ``spec()``."""
    from ip2p.metrics.groups import get_metric_group

    cols = {c.name: {"better": c.better, "tolerance": c.tolerance, "unit": c.unit}
            for c in get_metric_group(name).columns.values()}
    own = fn.spec() if callable(getattr(fn, "spec", None)) else {}
    return {"columns": cols, **own}
