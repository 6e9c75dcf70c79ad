"""Reader of MagicBrush's test set as its authors release it (a zip, or the folder it extracts to).

Layout (checked against MagicBrush's own ``edit_cli_single_multi_turn.py`` and
``evaluation/image_eval.py``)::

    test/edit_sessions.json     {img_id: [{"input": "<id>-input.png", "instruction": ...,
                                           "output": "<id>-output1.png", "mask": "<id>-mask1.png"},
                                          {"input": "<id>-output1.png", ..., "output": "<id>-output2.png"}, ...]}
    test/images/<id>/<id>-input.png, <id>-output<N>.png, <id>-mask<N>.png
    global_descriptions.json    {img_id: {"<id>-input.png": caption, "<id>-output<N>.png": caption}}
    local_descriptions.json     {img_id: {"<id>-output<N>.png": caption}}   (no input captions)

(the description files are looked for beside ``edit_sessions.json`` and one folder up: where the
release puts them is not stated in its code). The zip is password-protected (ZipCrypto); its
password, published in MagicBrush's README, is the default of option ``zip_password``. A turn's
``input`` is the ground-truth image it starts from: the input for turn 1, the previous turn's
ground-truth output after that.

Items (``turn_mode``):

- ``"<id>/1"``: turn 1, from ``<id>-input.png`` (shared by both settings; official name ``<id>_1.png``);
- ``"<id>/inde/<N>"`` (N >= 2, ``independent``): turn N from its ground-truth input
  (official name ``<id>_inde_<N>.png``);
- ``"<id>/iter/<N>"`` (N >= 2, ``iterative``): turn N from the method's own output of turn N-1
  (official name ``<id>_iter_<N>.png``); ``metadata["chain_from"]`` names the previous item, and
  ``bench.benchmarks`` supplies that output as the input when the sweep runs the turn.

``turn_mode="both"`` (default) yields all three kinds. ``captions="global"`` (default, as the
official scorer's ``--caption_path`` default) or ``"local"`` chooses the output caption; the input
caption always comes from the global file (the local one has none). A caption missing from the file
leaves the text empty, so its text metrics are NaN (counted), not zero. The mask (white = the
region the annotator edited) becomes ``mask``; the ground-truth output becomes ``target_image``.
"""
from __future__ import annotations

import json
import os
import posixpath
import zipfile
import zlib
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import torch

from ip2p.data.rows import BadRowLog
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, ImageReadError
from ip2p.util.io import decode_image_bytes, decode_image_plain, image_loader, load_image_plain, pil_to_tensor

TURN_MODES = ("both", "independent", "iterative")
CAPTION_SOURCES = ("global", "local")
SESSION_FIELDS = ("input", "instruction", "output", "mask")
DEFAULT_ZIP_PASSWORD = "MagicBrush"  # the test zip's password, published in MagicBrush's README


class ReleaseFiles:
    """Files of the release, from a zip or a folder, addressed by paths relative to the folder that
    holds ``edit_sessions.json`` (``test/`` in the release)."""

    def __init__(self, location: str | Path, zip_password: str | None = DEFAULT_ZIP_PASSWORD):
        self.location = Path(location)
        self.plain = False  # True: images read as the benchmark's scorer reads them
        self._zip: zipfile.ZipFile | None = None
        if self.location.is_file() and zipfile.is_zipfile(self.location):
            self._zip = zipfile.ZipFile(self.location)
            if zip_password:
                self._zip.setpassword(zip_password.encode())
            names = [n for n in self._zip.namelist() if PurePosixPath(n).name == "edit_sessions.json"]
            if not names:
                raise DataRowError(f"MagicBrush {location}: the zip holds no edit_sessions.json (expected test/edit_sessions.json)")
            self._members = set(self._zip.namelist())
            self.base = str(PurePosixPath(sorted(names, key=len)[0]).parent)
        elif self.location.is_dir():
            cands = [self.location / "edit_sessions.json", self.location / "test" / "edit_sessions.json"]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise DataRowError(f"MagicBrush {location}: no edit_sessions.json in it nor in its test/ folder")
            self.base = str(found.parent)
        else:
            raise DataRowError(f"MagicBrush {location}: not a folder nor a zip file")

    def _path(self, rel: str) -> str:
        if self._zip is not None:
            return posixpath.normpath(posixpath.join(self.base, rel)).lstrip("/")
        return os.path.normpath(os.path.join(self.base, rel))

    def describe(self, rel: str) -> str:
        return f"{self.location}:{self._path(rel)}" if self._zip is not None else self._path(rel)

    def exists(self, rel: str) -> bool:
        return self._path(rel) in self._members if self._zip is not None else Path(self._path(rel)).is_file()

    def read_bytes(self, rel: str) -> bytes:
        if self._zip is not None:
            try:
                return self._zip.read(self._path(rel))
            # a wrong password passes ZipCrypto's one-byte check 1 time in 256; the bytes it then
            # decrypts fail inflation (zlib.error) or the CRC check (BadZipFile)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
                raise DataRowError(f"{self.describe(rel)}: cannot read it from the zip ({e}); give the right zip_password "
                                   "option (the release's is on MagicBrush's README), or extract the zip and pass the folder") from e
        return Path(self._path(rel)).read_bytes()

    def load_image(self, rel: str, what: str, plain: bool | None = None) -> torch.Tensor:
        if not self.exists(rel):
            raise ImageReadError(f"{what} file not found: {self.describe(rel)}")
        where = f"{what} {self.describe(rel)}"
        if self.plain if plain is None else plain:
            return decode_image_plain(self.read_bytes(rel), where=where)
        return pil_to_tensor(decode_image_bytes(self.read_bytes(rel), where=where))

    def json_or_none(self, *rels: str) -> tuple[Any, str | None]:
        for rel in rels:
            if self.exists(rel):
                try:
                    return json.loads(self.read_bytes(rel).decode("utf-8")), rel
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataRowError(f"{self.describe(rel)}: not valid JSON: {e}") from e
        return None, None


def _white_region(files: ReleaseFiles, rel: str, what: str) -> torch.Tensor:
    return files.load_image(rel, what, plain=False).mean(0) > 0.5  # masks: always our reader (no scorer reads them)


def _captions(files: ReleaseFiles, name: str) -> tuple[dict, str | None]:
    data, rel = files.json_or_none(name, f"../{name}")
    if data is not None and not isinstance(data, dict):
        raise DataRowError(f"{files.describe(rel)}: expected {{img_id: {{image name: caption}}}}, got {type(data).__name__}")
    return data or {}, rel


def _caption(table: dict, img_id: str, image_name: str) -> str:
    per_id = table.get(img_id)
    value = per_id.get(image_name) if isinstance(per_id, dict) else None
    return value if isinstance(value, str) else ""


def read_magicbrush_release(location: str, *, split: str | None, bad: BadRowLog, turn_mode: str = "both",
                            captions: str = "global", zip_password: str | None = DEFAULT_ZIP_PASSWORD,
                            scoring: str = "authors") -> Iterator[EditExample]:
    if turn_mode not in TURN_MODES:
        raise DataRowError(f"MagicBrush option turn_mode: expected one of {TURN_MODES}, got {turn_mode!r}")
    if captions not in CAPTION_SOURCES:
        raise DataRowError(f"MagicBrush option captions: expected one of {CAPTION_SOURCES}, got {captions!r}")
    files = ReleaseFiles(location, zip_password)
    files.plain = image_loader(scoring) is load_image_plain  # as image_eval.py reads (scoring: authors)
    sessions, sess_rel = files.json_or_none("edit_sessions.json")
    sess_src = files.describe(sess_rel)
    if not isinstance(sessions, dict):
        raise DataRowError(f"{sess_src}: expected {{img_id: [turn, ...]}}, got {type(sessions).__name__}")
    global_caps, _ = _captions(files, "global_descriptions.json")
    local_caps, _ = _captions(files, "local_descriptions.json")
    out_caps = global_caps if captions == "global" else local_caps
    for img_id, turns in sessions.items():
        img_id = str(img_id)
        if not isinstance(turns, list) or not turns:
            bad.report(f"{sess_src} session {img_id!r}", "(session)", "expected a non-empty list of turns")
            continue
        chain_ok = True  # an iterative turn needs every earlier turn of its session
        for t, turn in enumerate(turns, start=1):
            src = f"{sess_src} session {img_id!r} turn {t}"
            ex = _turn_item(files, img_id, t, turn, src, bad, global_caps, out_caps, captions)
            if ex is None:
                if chain_ok and t < len(turns) and turn_mode != "independent":
                    for later in range(t + 1, len(turns) + 1):
                        bad.report(f"{sess_src} session {img_id!r} turn {later}", "input",
                                   f"iterative turn {later} starts from turn {later - 1}'s output, and turn {t} is unusable")
                chain_ok = False
                continue
            if t == 1:
                ex.item_id = f"{img_id}/1"
                ex.category = "turn_1"
                ex.metadata.update(turn_mode="single", official_name=f"{img_id}_1.png")
                yield ex
                continue
            if turn_mode in ("both", "independent"):
                yield _variant(ex, f"{img_id}/inde/{t}", "independent", f"{img_id}_inde_{t}.png")
            if turn_mode in ("both", "iterative") and chain_ok:
                prev = f"{img_id}/1" if t == 2 else f"{img_id}/iter/{t - 1}"
                it = _variant(ex, f"{img_id}/iter/{t}", "iterative", f"{img_id}_iter_{t}.png")
                it.metadata["chain_from"] = prev
                yield it


def _variant(ex: EditExample, item_id: str, mode: str, official_name: str) -> EditExample:
    return EditExample(item_id=item_id, instruction=ex.instruction, input_image=ex.input_image,
                       input_caption=ex.input_caption, output_caption=ex.output_caption,
                       target_image=ex.target_image, mask=ex.mask,
                       category=f"{mode}/turn_{ex.metadata['turn']}",
                       metadata={**ex.metadata, "turn_mode": mode, "official_name": official_name},
                       source=ex.source)


def _turn_item(files: ReleaseFiles, img_id: str, t: int, turn: Any, src: str, bad: BadRowLog,
               global_caps: dict, out_caps: dict, captions: str) -> EditExample | None:
    if not isinstance(turn, dict):
        bad.report(src, "(turn)", f"expected a mapping with {', '.join(SESSION_FIELDS)}, got {type(turn).__name__}")
        return None
    for f in ("input", "instruction", "output"):
        v = turn.get(f)
        if not isinstance(v, str) or not v.strip():
            bad.report(src, f, "missing field" if v is None else ("empty text" if isinstance(v, str) else f"expected text, got {type(v).__name__}"))
            return None
    rels = {"input": f"images/{img_id}/{turn['input']}", "output": f"images/{img_id}/{turn['output']}"}
    for f, rel in rels.items():
        if not files.exists(rel):
            bad.report(src, f, f"file not found: {files.describe(rel)}")
            return None
    mask = None
    if isinstance(turn.get("mask"), str) and turn["mask"]:
        mrel = f"images/{img_id}/{turn['mask']}"
        if not files.exists(mrel):
            bad.report(src, "mask", f"file not found: {files.describe(mrel)}")
            return None
        mask = partial(_white_region, files, mrel, f"mask of {src}")
    missing = []
    in_cap = _caption(global_caps, img_id, turn["input"])
    out_cap = _caption(out_caps, img_id, turn["output"])
    if not in_cap:
        missing.append("input_caption")
    if not out_cap:
        missing.append("output_caption")
    meta = {"img_id": img_id, "turn": t, "input_name": turn["input"], "output_name": turn["output"],
            "caption_source": captions}
    if missing:
        meta["missing_text"] = ",".join(missing)
    return EditExample(
        item_id=f"{img_id}/{t}", instruction=turn["instruction"],
        input_image=partial(files.load_image, rels["input"], f"input image of {src}"),
        target_image=partial(files.load_image, rels["output"], f"output image of {src}"),
        mask=mask, input_caption=in_cap, output_caption=out_cap, metadata=meta, source=src)


def is_release(p: Path) -> bool:
    """A MagicBrush release: a zip holding edit_sessions.json, or a folder with it (or test/ with it)."""
    if p.is_file():
        if p.suffix != ".zip" or not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as z:
            return any(PurePosixPath(n).name == "edit_sessions.json" for n in z.namelist())
    return p.is_dir() and ((p / "edit_sessions.json").is_file() or (p / "test" / "edit_sessions.json").is_file())
