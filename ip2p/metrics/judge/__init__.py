"""Judge metrics: vision-language models scoring edits under published rubrics, with provenance.

- :mod:`~ip2p.metrics.judge.rubrics` -- VIEScore (SC / PQ / sqrt(SC*PQ)), GEdit-Bench (SC / PQ / O)
  and ImgEdit (adherence / quality / detail preservation): prompts as published (``published/*.json``
  name the file and commit of each), answer parsing, how the parts combine.
- :mod:`~ip2p.metrics.judge.backends` -- an OpenAI-compatible chat endpoint (bounded retries with
  backoff, bounded concurrency, key from the environment) or a local transformers
  image-text-to-text model with a chat template.
- :mod:`~ip2p.metrics.judge.answer_cache` -- answers on disk keyed by content.
- :mod:`~ip2p.metrics.judge.metric` -- :class:`JudgeMetric`: rows with scores, status and the
  record of every query; a failure is missing (NaN) with its reason, never 0.

A spec turns it on with the ``judge`` metric group and a ``metrics.judge`` section
(``bench.spec.JudgeMetricSpec``).
"""
from ip2p.metrics.judge.answer_cache import AnswerCache, answer_key
from ip2p.metrics.judge.backends import Answer, EndpointBackend, LocalBackend
from ip2p.metrics.judge.metric import KILL_ENV, JudgeMetric, missing_by_reason
from ip2p.metrics.judge.rubrics import RUBRICS, columns, load_rubric, parse, queries

__all__ = ["AnswerCache", "answer_key", "Answer", "EndpointBackend", "LocalBackend", "JudgeMetric",
           "missing_by_reason", "KILL_ENV", "RUBRICS", "columns", "load_rubric", "parse", "queries"]
