"""Test helpers for the judge: a scripted OpenAI-compatible chat server on 127.0.0.1 (stdlib
http.server in a thread) and a tiny random Qwen2-VL built from a config with its processor."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IMGEDIT_OK = ("Brief reasoning: the edit follows the instruction.\nPrompt Compliance: 4\nVisual Naturalness: 3\n"
              "Physical & Detail Integrity: 5")
SC_OK = '{\n"score" : [7, 9],\n"reasoning" : "done"\n}'
PQ_OK = '{"score": [8, 6], "reasoning": "clean"}'

# marker in the prompt -> behaviour; the first marker found decides (else: "ok")
BEHAVIOURS = ("sorry", "refuse", "filtered", "badjson", "garbage", "429", "500", "hang", "flaky", "empty", "400")


class ScriptedChat:
    """``with ScriptedChat() as s: s.url``. Answers by the marker word ``mark-<behaviour>`` found in
    the request's text; counts requests per marker in ``s.counts`` (``total``: all)."""

    def __init__(self, hang_s: float = 2.0, fingerprint: str = "fp_test_1", model: str = "judge-test-2025"):
        self.hang_s, self.fingerprint, self.model = hang_s, fingerprint, model
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.last_auth: str | None = None

    def _behaviour(self, text: str) -> str:
        for b in BEHAVIOURS:
            if f"mark-{b}" in text:
                return b
        return "ok"

    def _answer(self, text: str) -> str:
        if "Prompt Compliance" in text or "Instruction Compliance" in text or "Fidelity" in text:
            return IMGEDIT_OK
        return SC_OK if "Editing instruction" in text else PQ_OK

    def handler(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = "".join(c.get("text", "") for m in req["messages"] for c in m["content"] if c["type"] == "text")
                b = srv._behaviour(text + " " + str(req.get("model")))
                with srv.lock:
                    srv.counts[b] += 1
                    srv.counts["total"] += 1
                    n = srv.counts[b]
                    srv.last_auth = self.headers.get("Authorization")
                if b == "hang":
                    time.sleep(srv.hang_s)
                    return self._send(200, b"{}")
                if b == "429" or (b == "flaky" and n == 1):
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                if b == "500":
                    return self._send(500, b'{"error": "boom"}')
                if b == "400":
                    return self._send(400, b'{"error": "bad request"}')
                if b == "garbage":
                    return self._send(200, b"<html>not json</html>")
                msg = {"role": "assistant", "content": srv._answer(text)}
                finish = "stop"
                if b == "refuse":
                    msg = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
                elif b == "filtered":
                    msg, finish = {"role": "assistant", "content": ""}, "content_filter"
                elif b == "badjson":
                    msg["content"] = '{"score": [7, 9], "reasoning": "unterminated' if "Editing instruction" in text \
                        else "Prompt Compliance: great\nVisual Naturalness: 3"
                elif b == "sorry":
                    msg["content"] = "I'm sorry, but I can't help with evaluating these images."
                elif b == "empty":
                    msg["content"] = "   "
                doc = {"id": "x", "object": "chat.completion", "model": srv.model, "system_fingerprint": srv.fingerprint,
                       "choices": [{"index": 0, "message": msg, "finish_reason": finish}]}
                self._send(200, json.dumps(doc).encode())

        return H

    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (printable bytes map to themselves, the rest shifted past 255)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
                 "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_qwen2vl(out: Path, seed: int = 0) -> Path:
    """A random Qwen2-VL (1 text layer, 1 vision block, hidden 32) with a byte-level tokenizer (256
    byte tokens, no merges), Qwen2-VL's image processor and a chat template, saved to ``out``."""
    import torch
    from transformers import (Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(_bytes_to_unicode().values()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    ids = dict(zip(specials, tok.convert_tokens_to_ids(specials)))
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=64 * 64 * 2),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
