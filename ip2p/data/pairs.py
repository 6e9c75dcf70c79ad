"""Training pairs from caption triplets, the paper's way (REFERENCE.md, "Data generation").

For a triplet (input caption, edit instruction, output caption) and a seed, one pair of images is
sampled by a text-to-image model with the two captions as one batch:

- Euler ancestral over the model's discrete sigmas (``ip2p.sampling``), ``steps`` steps;
- both images share the initial noise and every per-step noise (one draw per pair);
- classifier-free guidance ``uncond + cfg * (cond - uncond)`` with ``cfg ~ U(7.5, 15)``;
- Prompt-to-Prompt on self-attention: at step ``i`` the second image's self-attention maps are the
  first's while ``p > i / (len(sigmas) - 2)``, ``p ~ U(0.1, 0.9)`` (``ip2p.data.attention``; at
  ``p = 1`` every step but the last copies, exactly as the official rule).

Everything a pair depends on comes from ``torch.Generator().manual_seed(seed)``, drawn in the
official script's order: the initial noise, then ``p``, then ``cfg``, then one noise per step. So a
pair depends only on (model, triplet, seed, steps, ranges), never on its batch mates, and a
killed run regenerates exactly what it lost. The seeds of prompt ``i`` are drawn (distinct, in
``[0, 2**32)``, as the official script) from a generator seeded by (run seed, ``i``).

Written layout, as the official ``dataset_creation/generate_img_dataset.py`` and
``prepare_dataset.py`` write it (evidence: their code in timothybrooks/instruct-pix2pix)::

    out/{i:07d}/prompt.json       the prompt line as given (json.dumps of the parsed line)
    out/{i:07d}/{seed}_0.jpg      first image;  {seed}_1.jpg: second image (JPEG quality 100,
                                  pixels = uint8(255 * x) truncated, as its ``to_pil``)
    out/{i:07d}/metadata.jsonl    {"seed", "p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1",
                                  "clip_sim_dir", "clip_sim_image"} per pair (seed an integer;
                                  similarities null until computed: ``--clip`` or ``ip2p data filter``)
    out/seeds.json                sorted [[dir, [seed, ...]]], seeds as strings in file-name order
    out/generation.json           this run's settings and model identity (not in the release)

The official script writes only the pairs that pass its CLIP filter; here every pair is written and
``ip2p data filter`` chooses (its ``seeds.json`` lists the kept pairs).

Resumable: images are written atomically, the metadata row is appended only after both images
exist, and a rerun first repairs each folder (drops torn or duplicate rows and rows whose images
are missing) and then generates only the seeds without a row. Test hook:
``IP2P_PAIRS_KILL_AFTER=pair:K`` (SIGKILL after the K-th metadata row of this process) or
``images:K`` (after the K-th pair's images, before its row).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ip2p.data.attention import PairCopyState, install_pair_attention, restore_attention
from ip2p.errors import DataRowError, SpecError
from ip2p.guidance import cfg
from ip2p.sampling import NoiseSource, discrete_denoiser, discrete_sigmas, get_sigmas, sample_euler_ancestral
from ip2p.util.faults import KillSwitch
from ip2p.util.io import atomic_write_bytes, atomic_write_json, atomic_write_text

KILL_ENV = "IP2P_PAIRS_KILL_AFTER"
METADATA_KEYS = ("seed", "p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")
CLIP_KEYS = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")
WORLD_TRIPLETS = "world:triplets"
SEED_SPACE = 1 << 32


# ---------------------------------------------------------------- prompts

@dataclass(frozen=True)
class Triplet:
    """One prompt line: its index (the folder ``{index:07d}``), the line as parsed, and its texts."""

    index: int
    line: dict
    input: str
    edit: str
    output: str

    @property
    def folder(self) -> str:
        return f"{self.index:07d}"


def parse_triplet(obj: Any, index: int, source: str) -> Triplet:
    """A prompt line (``input`` or ``caption``, ``edit``, ``output``), or DataRowError naming the field."""
    if not isinstance(obj, dict):
        raise DataRowError(f"{source}: expected a JSON object with input/edit/output, got {type(obj).__name__}")
    key_in = "input" if "input" in obj else "caption"
    texts = {}
    for key in (key_in, "edit", "output"):
        v = obj.get(key)
        if not isinstance(v, str) or not v.strip():
            what = "missing" if v is None else ("empty" if isinstance(v, str) else f"not a string: {v!r}")
            field = "input' (or 'caption'" if key == key_in and key not in obj else key
            raise DataRowError(f"{source}: field '{field}': {what}; a prompt line needs the input caption "
                               f"('input' or 'caption'), 'edit' and 'output'")
        texts[key] = v
    return Triplet(index, obj, texts[key_in], texts["edit"], texts["output"])


def world_triplets(n: int, *, split: str = "train", seed: int = 0) -> list[dict]:
    """The small world's caption triplets (``world:triplets``): items ``0..n-1`` of ``split``,
    as prompt lines ``{"input", "edit", "output", "category", "world_item"}``."""
    from ip2p.data.world.examples import world_examples

    return [{"input": ex.input_caption, "edit": ex.instruction, "output": ex.output_caption,
             "category": ex.category, "world_item": ex.item_id}
            for ex in world_examples(split, n=n, seed=seed)]


def read_prompts(prompts: str | os.PathLike, *, limit: int | None = None) -> list[Triplet]:
    """Triplets of a prompt file (JSON lines; blank lines skipped, indices count the others) or of
    ``world:triplets`` (``limit`` items of the world's train split, default 1000)."""
    s = str(prompts)
    if s == WORLD_TRIPLETS or s.startswith(WORLD_TRIPLETS + ":"):
        split = s[len(WORLD_TRIPLETS) + 1:] or "train"
        lines = world_triplets(1000 if limit is None else int(limit), split=split)
        return [parse_triplet(obj, i, f"{s} item {i}") for i, obj in enumerate(lines)]
    path = Path(s)
    if not path.is_file():
        raise DataRowError(f"prompts file not found: {path} (a JSON-lines file of input/edit/output, "
                           f"or {WORLD_TRIPLETS})")
    out: list[Triplet] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if limit is not None and len(out) >= limit:
            break
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataRowError(f"{path}:{lineno}: not valid JSON: {e}") from e
        out.append(parse_triplet(obj, len(out), f"{path}:{lineno}"))
    return out


# ---------------------------------------------------------------- seeds and noise

def prompt_seeds(run_seed: int, prompt_index: int, n: int) -> list[int]:
    """``n`` distinct seeds in ``[0, 2**32)`` for prompt ``prompt_index``: drawn like the official
    script (``randint(1 << 32)``, repeats skipped) from a generator seeded by (run seed, index)."""
    h = hashlib.sha256(f"ip2p-pairs:{int(run_seed)}:{int(prompt_index)}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1)
    seeds: list[int] = []
    seen: set[int] = set()
    while len(seeds) < n:
        s = int(torch.randint(SEED_SPACE, (), generator=g))
        if s not in seen:
            seen.add(s)
            seeds.append(s)
    return seeds


@dataclass
class PairDraws:
    """What a pair's seed decides before sampling: the initial noise and its two random settings;
    ``generator`` then yields the per-step noise."""

    seed: int
    generator: torch.Generator
    initial_noise: torch.Tensor  # [1, C, h, w]
    p2p_threshold: float
    cfg_scale: float


def draw_pair(seed: int, latent_shape: Sequence[int], p2p_range: tuple[float, float],
              cfg_range: tuple[float, float]) -> PairDraws:
    """The official order: ``randn`` initial latent, ``p = lo + U * (hi - lo)``, ``cfg`` likewise."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, *latent_shape), generator=g)
    p = p2p_range[0] + float(torch.rand((), generator=g)) * (p2p_range[1] - p2p_range[0])
    cfg = cfg_range[0] + float(torch.rand((), generator=g)) * (cfg_range[1] - cfg_range[0])
    return PairDraws(int(seed), g, x, p, cfg)


class PairNoise(NoiseSource):
    """Per-step noise of a batch of pairs laid out ``[first_0, second_0, first_1, ...]``: one draw
    per pair from its generator, shared by both images."""

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 2 * len(self.generators):
            raise ValueError(f"pair noise for a batch of {x.shape[0]} rows from {len(self.generators)} pairs")
        return self.randn(x.shape[1:]).to(dtype=x.dtype).repeat_interleave(2, dim=0)


def copy_active(p2p_threshold: float, step: int, n_sigmas: int) -> bool:
    """The official rule: copy self-attention at step ``i`` while ``p > i / (len(sigmas) - 2)``
    (one step: the single step copies when ``p > 0``)."""
    return p2p_threshold > step / max(n_sigmas - 2, 1)


# ---------------------------------------------------------------- the sampler

class PairSampler:
    """A text-to-image model that samples Prompt-to-Prompt pairs (module docstring).

    ``model``: any text-to-image source the loading layer reads (``ip2p.models.load_components(kind="t2i")``:
    ``world:sd``, ``tiny-t2i``, a diffusers folder or hub id, a single file) or ``Components``. The
    model's ``prediction_type`` (epsilon, v_prediction, sample) is honoured.
    """

    def __init__(self, model="world:sd", *, device: str | torch.device | None = None, dtype=torch.float32,
                 resolution: int | None = None):
        from ip2p.models import components_from_pipe, load_components, place_for_inference
        from ip2p.text import PromptEncoder

        c = load_components(model, kind="t2i") if isinstance(model, (str, os.PathLike)) else model
        c = components_from_pipe(c, kind="t2i")
        self.components = c
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.unet = place_for_inference(c, self.device, dtype)
        self.resolution = int(resolution or c.resolution or 512)
        f = c.vae_scale_factor
        if self.resolution % f:
            raise SpecError(f"resolution {self.resolution} is not a multiple of the VAE factor {f}")
        self.latent_shape = (int(c.unet.config.in_channels), self.resolution // f, self.resolution // f)
        self.sigma_table = discrete_sigmas(torch.as_tensor(c.scheduler.alphas_cumprod))
        self.prompts = PromptEncoder(c.tokenizer, c.text_encoder, self.device, dtype)

    def identity(self) -> dict[str, Any]:
        from ip2p.models import weights_identity

        combined, parts = weights_identity(self.components)
        return {"source": self.components.source, "weights_hash": combined, "component_hashes": parts,
                "dtype": str(self.dtype).replace("torch.", ""), "resolution": self.resolution,
                "sampler": "euler_ancestral over discrete sigmas (k-diffusion get_sigmas), shared noise"}

    @torch.no_grad()
    def sample(self, firsts: Sequence[str], seconds: Sequence[str], draws: Sequence[PairDraws], steps: int, *,
               recorder: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(first [B,3,H,W], second [B,3,H,W])`` in [0, 1] of B pairs in one batch."""
        b = len(draws)
        if not (len(firsts) == len(seconds) == b):
            raise ValueError(f"{len(firsts)} first prompts, {len(seconds)} second prompts, {b} pair draws")
        text = self.prompts([t for pair in zip(firsts, seconds) for t in pair])  # [2B, L, D]
        null = self.prompts([""]).expand(2 * b, -1, -1)
        context = torch.cat([null, text])
        cfg_scale = torch.tensor([d.cfg_scale for d in draws], dtype=torch.float32).repeat_interleave(2)
        p = [d.p2p_threshold for d in draws]
        sigmas = get_sigmas(self.sigma_table, steps)
        x = torch.cat([d.initial_noise for d in draws]).repeat_interleave(2, dim=0).to(self.device) * sigmas[0]
        noise = PairNoise([d.generator for d in draws], dtype=torch.float32, device=self.device)
        state = PairCopyState(recorder=recorder)
        step = [0]

        def model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """The guided output (eps, v or sample, the model's kind) of the 2B pair latents."""
            state.copy = torch.tensor([copy_active(pj, step[0], len(sigmas)) for pj in p])
            step[0] += 1
            z = x_in.to(self.dtype)
            out = self.unet(torch.cat([z, z]), t.expand(4 * b), encoder_hidden_states=context, return_dict=False)[0]
            out_uncond, out_cond = out.float().chunk(2)
            return cfg(out_uncond, out_cond, cfg_scale)

        denoise = discrete_denoiser(model, self.sigma_table, self.components.prediction_type, self.device,
                                    sigmas=sigmas)
        saved = install_pair_attention(self.unet, state)
        try:
            latents = sample_euler_ancestral(denoise, x, sigmas, noise)
        finally:
            restore_attention(self.unet, saved)
        images = self.decode(latents)
        from ip2p.core import check_finite

        check_finite(images, latents, [f"pair seed {draws[j // 2].seed} ({'first' if j % 2 == 0 else 'second'} image, "
                                       f"prompt {(firsts if j % 2 == 0 else seconds)[j // 2]!r}): the model produced NaN/Inf"
                                       for j in range(2 * b)])
        return images[0::2], images[1::2]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        y = vae.decode(latents.to(self.device, self.dtype) / vae.config.scaling_factor).sample
        return (y.float() / 2 + 0.5).clamp(0, 1).cpu()


# ---------------------------------------------------------------- the official files

def official_jpeg(x: torch.Tensor) -> bytes:
    """A ``[3, H, W]`` image in [0, 1] as the official writer saves it: ``uint8(255 * x)``
    (truncated), JPEG quality 100."""
    from PIL import Image

    arr = (255.0 * x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def seed_file_key(seed: str | int) -> str:
    """Order of seeds within a folder in ``seeds.json``: the official ``sorted(glob('*_0.jpg'))``."""
    return f"{seed}_0.jpg"


def seeds_json(entries: Iterable[tuple[str, Iterable[int | str]]]) -> str:
    """``seeds.json`` text: sorted ``[[dir, [seed, ...]], ...]``, seeds as strings in file-name order,
    folders without seeds left out (as ``prepare_dataset.py``), ``json.dump`` formatting."""
    rows = []
    for name, seeds in entries:
        ss = sorted({str(s) for s in seeds}, key=seed_file_key)
        if ss:
            rows.append([name, ss])
    rows.sort()
    return json.dumps(rows)


def metadata_line(row: dict) -> str:
    return json.dumps({k: row.get(k) for k in METADATA_KEYS}) + "\n"


@dataclass
class FolderState:
    """The pairs of one prompt folder that are complete: metadata rows (by seed) with both images."""

    rows: dict[int, dict]
    repaired: int  # rows dropped: torn lines, duplicates, rows whose images are missing


def read_folder(folder: Path) -> FolderState:
    """Complete pairs of ``folder`` (see ``FolderState``); the first row of a seed wins."""
    rows: dict[int, dict] = {}
    dropped = 0
    path = folder / "metadata.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                seed = int(row["seed"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                dropped += 1  # a line torn by a kill
                continue
            if seed in rows or not ((folder / f"{seed}_0.jpg").is_file() and (folder / f"{seed}_1.jpg").is_file()):
                dropped += 1
                continue
            rows[seed] = row
    return FolderState(rows, dropped)


def repair_folder(folder: Path) -> FolderState:
    """``read_folder``, and rewrite ``metadata.jsonl`` atomically when rows were dropped."""
    st = read_folder(folder)
    if st.repaired:
        atomic_write_text(folder / "metadata.jsonl", "".join(metadata_line(r) for r in st.rows.values()))
    return st


def append_row(path: Path, row: dict) -> None:
    """Append one metadata line in one write, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, metadata_line(row).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_seeds_json(root: Path, rows_by_folder: dict[str, Iterable[int]], name: str = "seeds.json") -> Path:
    return atomic_write_text(root / name, seeds_json(rows_by_folder.items()))


# ---------------------------------------------------------------- the command's work

GENERATION_FILE = "generation.json"
_SETTINGS_THAT_MATTER = ("model", "steps", "run_seed", "p2p_range", "cfg_range", "resolution", "dtype")


def generate_pairs(model, prompts: str | os.PathLike | Sequence[Triplet], out: str | os.PathLike, *,
                   n_per_prompt: int = 100, steps: int = 100, run_seed: int = 0, batch_size: int = 8,
                   p2p_range: tuple[float, float] = (0.1, 0.9), cfg_range: tuple[float, float] = (7.5, 15.0),
                   limit: int | None = None, device=None, dtype=torch.float32, resolution: int | None = None,
                   clip=None, progress: bool = True, sampler: PairSampler | None = None, partition: int = 0,
                   n_partitions: int = 1) -> dict[str, Any]:
    """Generate (or complete) ``n_per_prompt`` pairs per triplet into ``out`` (module docstring).
    ``clip``: a ``ClipSimilarity`` to fill the four similarities now (else null). ``partition`` of
    ``n_partitions``: this process takes that contiguous block of the prompts (one process per GPU;
    each run lists every prompt's finished pairs in ``seeds.json``, so the last one to finish
    leaves the complete list). Returns a summary."""
    from tqdm import tqdm

    t0 = time.time()
    _check_counts_and_ranges(n_per_prompt, steps, batch_size, p2p_range, cfg_range)
    triplets = list(prompts) if isinstance(prompts, (list, tuple)) else read_prompts(prompts, limit=limit)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    sampler = sampler or PairSampler(model, device=device, dtype=dtype, resolution=resolution)
    settings = {"model": sampler.identity(), "steps": int(steps), "run_seed": int(run_seed),
                "p2p_range": [float(v) for v in p2p_range], "cfg_range": [float(v) for v in cfg_range],
                "resolution": sampler.resolution, "dtype": str(dtype).replace("torch.", "")}
    _check_generation_file(root, settings)

    mine = _partition_of(triplets, partition, n_partitions)
    counts = {"done_before": 0, "generated_now": 0, "rows_repaired": 0}
    bar = tqdm(total=len(mine) * n_per_prompt, desc="pairs" if n_partitions == 1 else f"pairs {partition + 1}/{n_partitions}",
               unit="pair", disable=not progress, dynamic_ncols=True)
    killer = KillSwitch(KILL_ENV)
    todo = _missing_pairs(root, mine, run_seed, n_per_prompt, counts, bar)
    while True:
        chunk = list(itertools.islice(todo, batch_size))
        if not chunk:
            break
        draws = [draw_pair(s, sampler.latent_shape, p2p_range, cfg_range) for _, s in chunk]
        first, second = sampler.sample([tr.input for tr, _ in chunk], [tr.output for tr, _ in chunk], draws, steps)
        sims = None
        if clip is not None:
            sims = clip(first, second, [tr.input for tr, _ in chunk], [tr.output for tr, _ in chunk])
        for j, ((tr, seed), d) in enumerate(zip(chunk, draws)):
            _write_pair(root / tr.folder, seed, first[j], second[j], _metadata_row(d, sims, j), killer)
            counts["generated_now"] += 1
            killer.tick("pair")
            bar.update(1)
    bar.close()
    listed = _list_finished_seeds(root, triplets, run_seed, n_per_prompt)
    return {"prompts": len(mine), "pairs": counts["done_before"] + counts["generated_now"],
            "pairs_listed": sum(len(v) for v in listed.values()), "generated_now": counts["generated_now"],
            "rows_repaired": counts["rows_repaired"], "seconds": round(time.time() - t0, 2)}


def _check_counts_and_ranges(n_per_prompt: int, steps: int, batch_size: int, p2p_range, cfg_range) -> None:
    if n_per_prompt < 1 or steps < 1 or batch_size < 1:
        raise SpecError(f"n_per_prompt, steps and batch_size must be >= 1 (got {n_per_prompt}, {steps}, {batch_size})")
    for name, (lo, hi) in (("p2p_range", p2p_range), ("cfg_range", cfg_range)):
        if hi < lo:
            raise SpecError(f"{name}: the upper end {hi} is below the lower end {lo}")


def _partition_of(triplets: Sequence[Triplet], partition: int, n_partitions: int) -> list[Triplet]:
    """The official script's partitioning: contiguous blocks of prompts (``np.array_split``)."""
    if not 0 <= partition < n_partitions:
        raise SpecError(f"partition {partition} is outside 0..{n_partitions - 1} (--n-partitions {n_partitions})")
    return [triplets[i] for i in np.array_split(np.arange(len(triplets)), n_partitions)[partition]]


def _prepare_folder(root: Path, tr: Triplet) -> FolderState:
    """The prompt's folder with its ``prompt.json`` (refused if made from another prompt), repaired."""
    folder = root / tr.folder
    prompt_text = json.dumps(tr.line)
    pj = folder / "prompt.json"
    if pj.is_file():
        if json.loads(pj.read_text()) != tr.line:
            raise DataRowError(f"{pj}: field 'prompt.json' differs from prompt {tr.index} of the prompts given "
                               f"({prompt_text[:80]}...); this folder was made from other prompts: use another --out")
    else:
        atomic_write_text(pj, prompt_text)
    return repair_folder(folder)


def _missing_pairs(root: Path, triplets: Sequence[Triplet], run_seed: int, n_per_prompt: int, counts: dict,
                   bar) -> Iterable[tuple[Triplet, int]]:
    """(triplet, seed) of every pair still to make, prompt by prompt (each folder prepared and
    repaired when its turn comes, so a huge prompt file costs no up-front scan); the pairs already
    made and the rows repaired are counted in ``counts`` (and the former on ``bar``)."""
    for tr in triplets:
        st = _prepare_folder(root, tr)
        counts["rows_repaired"] += st.repaired
        for seed in prompt_seeds(run_seed, tr.index, n_per_prompt):
            if seed in st.rows:
                counts["done_before"] += 1
                bar.update(1)
            else:
                yield tr, seed


def _metadata_row(d: PairDraws, sims: dict | None, j: int) -> dict:
    """Pair ``j``'s metadata row: its seed and draws, and its CLIP similarities when computed."""
    row = {"seed": d.seed, "p2p_threshold": d.p2p_threshold, "cfg_scale": d.cfg_scale}
    if sims is not None:
        row.update({"clip_sim_0": _finite(sims["sim_0"][j]), "clip_sim_1": _finite(sims["sim_1"][j]),
                    "clip_sim_dir": _finite(sims["sim_direction"][j]),
                    "clip_sim_image": _finite(sims["sim_image"][j])})
    return row


def _write_pair(folder: Path, seed: int, first: torch.Tensor, second: torch.Tensor, row: dict,
                killer: KillSwitch) -> None:
    """Both images atomically, then the metadata row: a row is only ever written for a whole pair."""
    atomic_write_bytes(folder / f"{seed}_0.jpg", official_jpeg(first))
    atomic_write_bytes(folder / f"{seed}_1.jpg", official_jpeg(second))
    killer.tick("images")
    append_row(folder / "metadata.jsonl", row)


def _list_finished_seeds(root: Path, triplets: Sequence[Triplet], run_seed: int, n_per_prompt: int) -> dict[str, list]:
    """``seeds.json`` from what is on disk for every prompt (all partitions), as ``prepare_dataset.py``
    lists it; returns what it listed, by folder."""
    listed = {}
    for tr in triplets:
        rows = read_folder(root / tr.folder).rows if (root / tr.folder).is_dir() else {}
        wanted = set(prompt_seeds(run_seed, tr.index, n_per_prompt))
        listed[tr.folder] = [s for s in rows if s in wanted]
    write_seeds_json(root, listed)
    return listed


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _check_generation_file(root: Path, settings: dict) -> None:
    """Record the settings on the first run; refuse to extend a folder made with other settings."""
    import ip2p

    path = root / GENERATION_FILE
    if path.is_file():
        old = json.loads(path.read_text())["settings"]
        for key in _SETTINGS_THAT_MATTER:
            a, b = old.get(key), settings.get(key)
            if key == "model":
                a, b = (a or {}).get("weights_hash"), (b or {}).get("weights_hash")
            if a != b:
                raise SpecError(f"{root}: setting {key!r} differs from the run that made this folder ({a!r} there, "
                                f"{b!r} now); pairs made with other settings cannot be mixed: use another --out")
        return
    from ip2p.util.provenance import package_versions

    atomic_write_json(path, {"settings": settings, "ip2p_version": ip2p.__version__, "versions": package_versions(),
                             "layout": "official InstructPix2Pix (generate_img_dataset.py + prepare_dataset.py)"})
