"""The world tokenizer: every world word is one known token; specials sit at the two highest ids."""
from __future__ import annotations

import json

import pytest

from ip2p.data.world.edits import TEMPLATES
from ip2p.world.recipe import TOKENIZER_DIR
from ip2p.data.world.tokenizer import BOS, EOS, build_vocab, world_words



@pytest.fixture(scope="module")
def tok():
    assert (TOKENIZER_DIR / "vocab.json").exists(), f"the world tokenizer is shipped without {TOKENIZER_DIR}/vocab.json"
    from ip2p.models import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


def test_shipped_files_match_the_generator():
    vocab, merges = build_vocab(world_words())
    shipped = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert shipped == vocab, "vocab.json is stale: rerun `ip2p world build-tokenizer`"
    lines = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert [tuple(x.split()) for x in lines if x] == merges


def test_specials_at_highest_ids(tok):
    n = len(tok)
    assert tok.convert_tokens_to_ids(BOS) == n - 2 and tok.convert_tokens_to_ids(EOS) == n - 1
    assert tok.bos_token_id == n - 2 and tok.eos_token_id == tok.pad_token_id == n - 1
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length).input_ids[0]
    assert ids[0] == n - 2 and len(ids) == tok.model_max_length
    # argmax finds the first end-of-text, as open_clip's pooling does
    assert max(range(len(ids)), key=lambda i: (ids[i], -i)) == 4


def test_every_world_word_is_one_known_token(tok):
    unk = tok.unk_token_id
    for w in world_words():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"world word {w!r} splits into {tok.convert_ids_to_tokens(ids)}"
        assert ids[0] != unk or w == EOS


def test_all_captions_and_instructions_including_held_out_fit(tok):
    from ip2p.data.world.examples import world_examples

    n_words = n_held = 0
    for split in ("train", "test"):
        for e in world_examples(split, 240):
            n_held += e.metadata["held_out_phrasing"]
            for text in (e.instruction, e.input_caption, e.output_caption):
                ids = tok(text).input_ids
                assert len(ids) <= tok.model_max_length, (e.item_id, text)
                words = text.replace(",", " , ").split()
                assert len(ids) == len(words) + 2, (e.item_id, text)  # one token per word
                assert tok.unk_token_id not in ids[1:-1], (e.item_id, text)
                n_words += len(words)
    assert n_words > 1000
    assert n_held > 20  # held-out phrasings were among the texts checked
    # and every word of every held-out template is a single known token
    for t in (t for c in TEMPLATES.values() for t, h in c if h):
        for w in t.replace(",", " ").split():
            if not w.startswith("{"):
                assert len(tok(w, add_special_tokens=False).input_ids) == 1, (t, w)


def test_unknown_text_still_tokenizes_to_known_byte_tokens(tok):
    ids = tok("Zebra crossing #42!").input_ids
    assert tok.unk_token_id not in ids[1:-1] and len(ids) > 4
