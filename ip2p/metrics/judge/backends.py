"""Where judge answers come from: an OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API)
or a local transformers vision-language model. Both take a prompt and images and return an
``Answer``: the raw text and who answered, or a failure with its reason (never a score).

Failure reasons: ``refused`` (the judge declined: a refusal field or a content filter; an answer
without scores that reads as a refusal is also counted so by the metric), ``empty``,
``timeout``, ``rate_limited`` (HTTP 429), ``server_error`` (HTTP 5xx), ``http_error`` (other HTTP
status), ``malformed_response`` (a body that is not the chat API's JSON), ``failed`` (connection or
model error). Timeouts, 429, 5xx and connection errors are retried ``max_retries`` times with
exponential backoff (``backoff_s * 2**k``, at most ``max_backoff_s``; a numeric Retry-After is
honoured up to that bound); nothing else is retried.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

RETRIED = ("timeout", "rate_limited", "server_error", "failed")


@dataclass
class Answer:
    """One query's outcome. ``status``: ``ok`` or a failure reason; ``text``: the raw answer;
    ``model`` / ``fingerprint``: what the endpoint reports (model, system_fingerprint)."""

    status: str
    text: str | None = None
    model: str | None = None
    fingerprint: str | None = None
    attempts: int = 1
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def png_data_url(image: torch.Tensor) -> str:
    """A uint8 ``[3, H, W]`` image as a PNG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class EndpointBackend:
    """POST ``{base_url}/chat/completions``: one user message, the text then the images (PNG data
    URLs), the model and the sampling settings; the key (if any) from ``api_key_env``."""

    kind = "endpoint"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                 max_concurrency: int = 4):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.max_concurrency = max(1, int(max_concurrency))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "base_url": self.url.rsplit("/chat/completions", 1)[0], "model": self.model}

    def _post(self, body: bytes) -> tuple[int, dict, bytes]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers or {}), e.read() if e.fp else b""

    def _once(self, body: bytes) -> tuple[Answer, float | None]:
        """One attempt: the answer and a Retry-After delay when the server gave one."""
        try:
            code, headers, data = self._post(body)
        except (socket.timeout, TimeoutError):
            return Answer("timeout", detail=f"no answer within {self.timeout_s:g} s"), None
        except (urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException) as e:
            if isinstance(getattr(e, "reason", None), (socket.timeout, TimeoutError)):
                return Answer("timeout", detail=f"no connection within {self.timeout_s:g} s"), None
            return Answer("failed", detail=f"{type(e).__name__}: {getattr(e, 'reason', e)}"), None
        retry_after = headers.get("Retry-After") or headers.get("retry-after")
        wait = float(retry_after) if retry_after and str(retry_after).replace(".", "", 1).isdigit() else None
        if code == 429:
            return Answer("rate_limited", detail="HTTP 429"), wait
        if code >= 500:
            return Answer("server_error", detail=f"HTTP {code}"), wait
        if code != 200:
            return Answer("http_error", detail=f"HTTP {code}: {data[:200]!r}"), None
        return _read_completion(data), None

    def ask(self, prompt: str, images: Sequence[torch.Tensor], sampling: dict[str, Any]) -> Answer:
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": png_data_url(x)}} for x in images]
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": content}],
                           **sampling}).encode()
        for attempt in range(self.max_retries + 1):
            ans, wait = self._once(body)
            ans.attempts = attempt + 1
            if ans.status not in RETRIED or attempt == self.max_retries:
                return ans
            delay = min(self.max_backoff_s, wait if wait is not None else self.backoff_s * 2 ** attempt)
            time.sleep(delay)
        return ans  # pragma: no cover - the loop always returns


def _read_completion(data: bytes) -> Answer:
    """An Answer from a chat-completions response body."""
    try:
        doc = json.loads(data)
        choice = doc["choices"][0]
        msg = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Answer("malformed_response", detail=f"not a chat completion: {data[:200]!r}")
    model, fp = doc.get("model"), doc.get("system_fingerprint")
    if msg.get("refusal") or choice.get("finish_reason") == "content_filter":
        return Answer("refused", text=msg.get("content"), model=model, fingerprint=fp,
                      detail=str(msg.get("refusal") or "finish_reason content_filter"))
    text = msg.get("content")
    if isinstance(text, list):  # content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if not isinstance(text, str) or not text.strip():
        return Answer("empty", text=text if isinstance(text, str) else None, model=model, fingerprint=fp,
                      detail="no answer text")
    return Answer("ok", text=text, model=model, fingerprint=fp)


class LocalBackend:
    """A transformers image-text-to-text model with a chat template (a hub id, offline unless
    ``HF_HUB_OFFLINE=0``, or a folder); greedy decoding by default."""

    kind = "local"
    max_concurrency = 1

    def __init__(self, model: str, *, device: str = "cpu", revision: str | None = None,
                 torch_dtype: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ip2p.models import local_files_only_default

        local = Path(model).expanduser()
        kw: dict[str, Any] = {"local_files_only": local.exists() or local_files_only_default(None)}
        if revision:
            kw["revision"] = revision
        src = str(local) if local.exists() else model
        self.processor = AutoProcessor.from_pretrained(src, **kw)
        dtype = getattr(torch, torch_dtype) if torch_dtype else None
        self.model = AutoModelForImageTextToText.from_pretrained(src, dtype=dtype, **kw).to(device).eval()
        self.device = device
        self.source = src
        self.revision = revision or getattr(self.model.config, "_commit_hash", None) or _folder_hash(local)

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.source, "revision": self.revision,
                "class": type(self.model).__name__}

    @torch.no_grad()
    def ask(self, prompt: str, images: Sequence[torch.Tensor], sampling: dict[str, Any]) -> Answer:
        from PIL import Image

        try:
            pil = [Image.fromarray(x.permute(1, 2, 0).contiguous().numpy()) for x in images]
            msgs = [{"role": "user", "content": [{"type": "text", "text": prompt}] + [{"type": "image"} for _ in pil]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text], images=pil or None, return_tensors="pt").to(self.device)
            out = self.model.generate(**inputs, **sampling)
            answer = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        except Exception as e:  # a model error is this query's failure, not the sweep's
            return Answer("failed", detail=f"{type(e).__name__}: {e}"[:500])
        if not answer.strip():
            return Answer("empty", text=answer, model=self.source, fingerprint=self.revision, detail="no answer text")
        return Answer("ok", text=answer, model=self.source, fingerprint=self.revision)


def _folder_hash(path: Path) -> str | None:
    if not path.exists():
        return None
    from ip2p.util.hashing import hash_folder

    return hash_folder(path)


__all__ = ["Answer", "EndpointBackend", "LocalBackend", "png_data_url", "RETRIED"]
