"""The world's tokenizer: CLIP-format BPE files (vocab.json, merges.txt) built from the world's words.

The vocabulary holds the 512 byte-level base symbols of CLIP's BPE (each byte, alone and as a word
end), so any text tokenizes to known tokens; then one whole-word token per word the world's
captions and instructions use, with the merges that build it left to right; then
``<|startoftext|>`` and ``<|endoftext|>`` at the two highest ids, so both eos-id pooling
(transformers ``CLIPTextModel``) and argmax pooling (open_clip) find the end of text.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 48  # longest world caption is about 40 tokens with bos/eos


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE, in byte order."""
    from ip2p.util.bpe import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def world_words() -> list[str]:
    """Every word (and punctuation mark) of every world caption and instruction phrasing, sorted."""
    from ip2p.data.world.edits import all_instruction_words
    from ip2p.data.world.scenes import BACKGROUNDS, COLOURS, KINDS, PUDDLE, all_captions, random_scene

    words = set(all_instruction_words())
    for name in list(COLOURS) + list(BACKGROUNDS) + list(KINDS) + [PUDDLE]:
        words.update(name.split())
    rng = np.random.default_rng(12345)
    for _ in range(3000):  # covers every caption template, position phrase and size word
        scene = random_scene(rng, n_shapes=int(rng.integers(0, 4)), night_p=0.5, puddle_p=0.5)
        for c in all_captions(scene):
            words.update(c.replace(",", " , ").split())
    return sorted(w.lower() for w in words)


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word (already in byte symbols): merge the lowest-ranked pair until none applies."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, _ = min(pairs)
        if rank == 1 << 30:
            break
        pair = next((pieces[i], pieces[i + 1]) for r, i in pairs if r == rank)
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                out.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) for ``words``: every word becomes one token; specials at the two highest ids.

    Merges are added left to right per word; where another word's earlier merge splits a word
    differently, merges joining its actual pieces are appended until every word is one token.
    """
    base = byte_symbols()
    tokens: list[str] = base + [b + "</w>" for b in base]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add(pair):
        if pair not in ranks:
            ranks[pair] = len(merges)
            merges.append(pair)
        tok = pair[0] + pair[1]
        if tok not in known:
            known.add(tok)
            tokens.append(tok)

    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for p in pieces[1:]:
            add((cur, p))
            cur = cur + p
    for _ in range(100):  # repair words that other merges split differently
        broken = [w for w in words if len(bpe(w, ranks)) > 1]
        if not broken:
            break
        for w in broken:
            pieces = bpe(w, ranks)
            while len(pieces) > 1:
                add((pieces[0], pieces[1]))
                pieces = [pieces[0] + pieces[1]] + pieces[2:]
    else:  # pragma: no cover
        raise RuntimeError("world tokenizer: could not make every word a single token")
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write vocab.json and merges.txt for the world's words into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(world_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    return folder


def build_tokenizer(folder: str | Path):
    """Build and save the world's ``CLIPTokenizer`` (transformers format) in ``folder`` (one folder
    swap); return it."""
    from ip2p.util.io import replacing_dir

    with replacing_dir(folder) as tmp:
        tok = _write_tokenizer(Path(tmp))
    return tok


def _write_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )
    tok.save_pretrained(str(folder))
    return tok


__all__ = ["BOS", "EOS", "MODEL_MAX_LENGTH", "world_words", "build_vocab", "build_tokenizer"]
