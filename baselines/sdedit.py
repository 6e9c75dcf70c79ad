"""SDEdit: Stable Diffusion img2img with the output caption (the paper's first baseline).

The input image is encoded, noised to the timestep that ``strength`` selects and denoised by a
text-to-image model prompted with the request's ``output_caption``, under classifier-free
guidance ``eps_uncond + s * (eps_text - eps_uncond)``. The paper sweeps ``strength``.

- Exact to diffusers' ``StableDiffusionImg2ImgPipeline``: the same start step
  (``int(num_inference_steps * strength)`` denoising steps, the last ones of the scheduler's
  schedule), the image latent ``scaling_factor * posterior sample`` (``retrieve_latents``'s
  default ``sample_mode="sample"``), the initial noise added with ``scheduler.add_noise``.
- Reproducible per request: request ``i`` with seed ``s`` draws, from its own
  ``torch.Generator().manual_seed(s)`` and in this order, the posterior sample, the initial noise,
  then every per-step scheduler noise, which is what diffusers draws for that image alone; so its
  output does not depend on batch mates (DESIGN invariant 1).
- Batched: one UNet call serves requests with different strengths, guidance scales and seeds.
  Requests with the same number of steps walk the same timestep schedule, a smaller strength
  joining later (each start step keeps its own scheduler state); each distinct input is
  VAE-encoded once and each distinct caption embedded once.
- Deliberate differences from diffusers: the guidance formula is applied for every ``s`` (diffusers
  uses the text-conditioned prediction alone for any ``s <= 1``; the two agree at ``s = 1``, where
  this editor too runs the conditional half only); a strength that gives zero denoising steps
  (``int(steps * strength) == 0``, e.g. 0) returns the processed input unchanged, where diffusers
  fails; sampling runs in float32 with the models in ``dtype`` (as ``ip2p.editor``).

Models: a diffusers text-to-image folder or hub id (``world:sd``, the small world's SD; for real
images ``stable-diffusion-v1-5/stable-diffusion-v1-5``), or a built-in architecture with random
weights named ``<arch>-t2i`` (``tiny-t2i``, ``sd15-t2i``) for tests. An InstructPix2Pix (8-channel)
UNet is refused.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ip2p.editor import RESIZE_MODES, InstructPix2PixEditor, _who, check_finite
from ip2p.errors import DataRowError, ModelLoadError
from ip2p.guidance import as_scale
from ip2p.models import (
    BUILTIN_ARCHITECTURES,
    Components,
    check_output_and_text_width,
    local_files_only_default,
    place_for_inference,
    openai_clip_tokenizer_dir,
    resolve_source,
    editor_identity,
)
from ip2p.protocol import EditRequest, resolve_knobs
from ip2p.sampling import NoiseSource, fresh_scheduler, scheduler_from
from ip2p.text import PromptEncoder
from ip2p.util.hashing import hash_bytes, hash_tensor

T2I_SUFFIX = "-t2i"  # "<arch>-t2i": a built-in architecture with a text-to-image (4-channel) UNet


# ---------------------------------------------------------------- components

def validate_t2i_components(c: Components) -> Components:
    """Refuse what cannot run SD img2img: the UNet must take exactly the VAE's latent channels."""
    in_ch = int(c.unet.config.in_channels)
    lat = int(c.vae.config.latent_channels)
    if in_ch != lat:
        hint = (
            " It is an InstructPix2Pix (image-conditioned) UNet; SDEdit needs the text-to-image model it was "
            "fine-tuned from, e.g. world:sd or stable-diffusion-v1-5/stable-diffusion-v1-5."
            if in_ch == 2 * lat
            else ""
        )
        raise ModelLoadError(
            f"{c.source or 'model'}: the UNet takes {in_ch} input channels, but SDEdit needs a text-to-image "
            f"UNet with {lat} (the VAE's latent channels).{hint}"
        )
    check_output_and_text_width(c)
    if getattr(c.unet.config, "time_cond_proj_dim", None) is not None:
        raise ModelLoadError(f"{c.source or 'model'}: guidance-distilled UNets (time_cond_proj_dim) are not supported")
    return c


def as_components(model, *, source: str = "") -> Components:
    """``Components`` from anything with ``unet, vae, text_encoder, tokenizer, scheduler``
    attributes (a ``Components``, a diffusers SD / img2img pipeline), validated for SDEdit."""
    if isinstance(model, Components):
        c = model
    else:
        missing = [a for a in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(model, a, None) is None]
        if missing:
            raise ModelLoadError(f"{type(model).__name__} has no {missing[0]!r}; SDEdit needs unet, vae, text_encoder, "
                                 f"tokenizer and scheduler")
        res = int(model.unet.config.sample_size) * 2 ** (len(model.vae.config.block_out_channels) - 1)
        c = Components(model.unet, model.vae, model.text_encoder, model.tokenizer, model.scheduler,
                       source=source or getattr(model, "name_or_path", "") or type(model).__name__, resolution=res)
        c.info = {"kind": "pipeline"}
    return validate_t2i_components(c)


def build_t2i_builtin(arch: str = "tiny", *, seed: int = 0, torch_dtype=None) -> Components:
    """Random-weight text-to-image model of a built-in architecture (``ip2p/configs/<arch>.json``
    with the UNet's ``in_channels`` set to the VAE's latent channels); deterministic from ``seed``."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = BUILTIN_ARCHITECTURES.get(arch)
    if path is None:
        raise ModelLoadError(f"unknown built-in architecture {arch!r}; known: "
                             f"{', '.join(a + T2I_SUFFIX for a in sorted(BUILTIN_ARCHITECTURES))}")
    cfg = json.loads(Path(path).read_text())
    unet_cfg = {**cfg["unet"], "in_channels": cfg["vae"]["latent_channels"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    tokenizer = CLIPTokenizer.from_pretrained(str(openai_clip_tokenizer_dir()))
    sched_cls = getattr(diffusers, cfg["scheduler"].get("_class_name", "EulerAncestralDiscreteScheduler"))
    scheduler = sched_cls(**{k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")})
    c = Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, source=arch + T2I_SUFFIX,
                   resolution=cfg.get("resolution"))
    c.info = {"kind": "builtin", "architecture": arch, "seed": seed, "unet_in_channels": unet_cfg["in_channels"]}
    if torch_dtype is not None:
        for m in (c.unet, c.vae, c.text_encoder):
            m.to(torch_dtype)
    return validate_t2i_components(c)


def load_t2i_diffusers(source: str, *, local_files_only: bool | None = None, torch_dtype=None,
                       revision: str | None = None) -> Components:
    """Components of a diffusers text-to-image folder or hub id (``StableDiffusionPipeline``
    layout). The UNet's channel count is checked from its config before any weights load."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local_files_only = local_files_only_default(local_files_only)
    is_dir = Path(source).is_dir()
    kw: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        kw["revision"] = revision

    def attempt(what, fn):
        try:
            return fn()
        except ModelLoadError:
            raise
        except (OSError, ValueError) as e:  # huggingface_hub errors derive from these
            first = str(e).splitlines()[0] if str(e) else ""
            if is_dir:
                raise ModelLoadError(f"{source}/{what}: cannot load: {type(e).__name__}: {first}") from e
            raise ModelLoadError(
                f"cannot load model {source!r} ({what}): not a local folder and not found on the Hub or in the local "
                f"cache ({type(e).__name__}: {first}). On a machine with network run `hf download {source} "
                f"--local-dir <folder>` and pass that folder, or copy it into $HF_HOME/hub (then HF_HUB_OFFLINE=1)."
            ) from e

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if is_dir and not (Path(source) / sub).is_dir():
            raise ModelLoadError(f"{source}: the diffusers folder has no '{sub}/' subfolder "
                                 f"(expected unet, vae, text_encoder, tokenizer, scheduler)")
    unet_cfg = attempt("unet", lambda: UNet2DConditionModel.load_config(source, subfolder="unet", **kw))
    vae_cfg = attempt("vae", lambda: AutoencoderKL.load_config(source, subfolder="vae", **kw))
    if int(unet_cfg["in_channels"]) != int(vae_cfg.get("latent_channels", 4)):
        lat = int(vae_cfg.get("latent_channels", 4))
        hint = (" It is an InstructPix2Pix (image-conditioned) UNet; pass the text-to-image model it was fine-tuned "
                "from, e.g. world:sd or stable-diffusion-v1-5/stable-diffusion-v1-5." if int(unet_cfg["in_channels"]) == 2 * lat else "")
        raise ModelLoadError(f"{source}: the UNet takes {unet_cfg['in_channels']} input channels, but SDEdit needs a "
                             f"text-to-image UNet with {lat} (the VAE's latent channels).{hint}")
    wkw = {**kw, **({"torch_dtype": torch_dtype} if torch_dtype is not None else {})}
    unet = attempt("unet", lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", **wkw))
    vae = attempt("vae", lambda: AutoencoderKL.from_pretrained(source, subfolder="vae", **wkw))
    text_encoder = attempt("text_encoder", lambda: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **wkw))
    tokenizer = attempt("tokenizer", lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw))
    # any scheduler class reads scheduler_config.json; its _class_name picks the class
    sched_cfg = attempt("scheduler", lambda: diffusers.DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
    sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name", "")), None)
    if sched_cls is None:
        raise ModelLoadError(f"{source}/scheduler: unknown scheduler class {sched_cfg.get('_class_name')!r}")
    scheduler = sched_cls.from_config(sched_cfg)
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    c = Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, source=source, resolution=res)
    c.info = {"kind": "diffusers", "local_files_only": local_files_only}
    return validate_t2i_components(c)


def load_t2i_components(source: str | os.PathLike = "world:sd", *, local_files_only: bool | None = None,
                        torch_dtype=None, seed: int = 0) -> Components:
    """A text-to-image model from ``<arch>-t2i`` (random built-in), ``world:<name>``, a diffusers
    folder or a hub id."""
    s = str(source)
    if s.endswith(T2I_SUFFIX) and s[: -len(T2I_SUFFIX)] in BUILTIN_ARCHITECTURES:
        return build_t2i_builtin(s[: -len(T2I_SUFFIX)], seed=seed, torch_dtype=torch_dtype)
    if s in BUILTIN_ARCHITECTURES:
        raise ModelLoadError(f"{s!r} is the built-in InstructPix2Pix architecture; SDEdit's random text-to-image "
                             f"version is {s + T2I_SUFFIX!r}")
    resolved = resolve_source(s)
    p = Path(resolved)
    if p.is_file():
        raise ModelLoadError(
            f"{p}: SDEdit loads diffusers folders or hub ids; convert a single-file checkpoint with "
            f"diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(<folder>)")
    if p.is_dir() and not (p / "unet").is_dir():
        if s.startswith("world:"):
            raise ModelLoadError(f"world model {s!r} is not fully built: {p} has no unet/ subfolder. "
                                 f"Build it with its recipe (see ip2p/world/README.md).")
        raise ModelLoadError(f"{p} is a folder but not a diffusers pipeline folder (no unet/ subfolder)")
    c = load_t2i_diffusers(resolved, local_files_only=local_files_only, torch_dtype=torch_dtype)
    c.source = s
    return c


# ---------------------------------------------------------------- the editor

def denoising_start(num_inference_steps: int, strength: float) -> int:
    """Index of the first of the schedule's steps that SDEdit runs: diffusers' ``t_start``.
    ``int(steps * strength)`` steps run; ``steps`` means none (the input is returned)."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_timestep, 0)


class SDEditEditor:
    """SDEdit behind the harness protocol (``ip2p.protocol.Editor``)."""

    name = "sdedit"
    # knob -> default (diffusers' img2img defaults)
    knobs: Mapping[str, Any] = {"strength": 0.75, "guidance_scale": 7.5, "num_inference_steps": 50}

    def __init__(
        self,
        components,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_batch: int = 16,
        resize: str | None = "paper",
        resolution: int | None = None,
        scheduler=None,
        compile: bool = False,
    ):
        """``components``: a ``Components`` or any object with ``unet, vae, text_encoder,
        tokenizer, scheduler`` (e.g. a diffusers pipeline). ``scheduler``: None for the model's
        own, a diffusers scheduler instance, or a class name (``"DDIMScheduler"``) built from the
        model's scheduler config. ``max_batch``: requests per UNet call (2x samples with guidance)."""
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        c = as_components(components)
        self.components = c
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.resize = resize
        self.resolution = int(resolution or c.resolution or 512)
        self.unet = place_for_inference(c, self.device, dtype, compile=compile)
        self.scheduler = c.scheduler if scheduler is None else scheduler_from(scheduler, c.scheduler.config)
        self._identity: dict[str, Any] | None = None
        self.prompts = PromptEncoder(c.tokenizer, c.text_encoder, self.device, dtype)

    @classmethod
    def from_pipe(cls, pipe, **kwargs) -> "SDEditEditor":
        """Wrap a diffusers ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline``
        (components shared, its scheduler used unless ``scheduler=`` is given)."""
        kwargs.setdefault("device", pipe.device)
        kwargs.setdefault("dtype", pipe.unet.dtype)
        return cls(pipe, **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        return self.components.vae_scale_factor

    def identity(self) -> dict[str, Any]:
        """Method, source, weights hashes and sampler: what outputs depend on besides the request."""
        if self._identity is None:
            sched_cfg = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
            self._identity = editor_identity(
                self.name, self.components, self.dtype, sampler=type(self.scheduler).__name__,
                scheduler_config_hash=hash_bytes(json.dumps(sched_cfg, sort_keys=True, default=str).encode()),
                prompt="output_caption", resize=self.resize, resolution=self.resolution)
        return dict(self._identity)

    # ------------------------------------------------------------ preprocessing and encoders

    # The InstructPix2Pix editor's preprocessing (it reads only ``vae_scale_factor`` and
    # ``resolution``), so both methods see the same pixels for the same ``resize``.
    preprocess = InstructPix2PixEditor.preprocess

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text encoder hidden states ``[N, L, D]`` as diffusers' ``encode_prompt``; each distinct prompt once."""
        return self.prompts(prompts)

    @torch.no_grad()
    def encode_posterior(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, std)`` of ``2x - 1`` for each image (unscaled latent space).

        One image per VAE call, as diffusers encodes with per-image generators: batched
        convolutions round differently, and a sampler started from a large noise level can
        amplify that (measured: 2e-3 in pixels with DDIM at strength 1 on random weights). The
        encoder runs once per distinct image, a small cost next to the denoising steps."""
        vae = self.components.vae
        means, stds = [], []
        for x in images:
            dist = vae.encode(2 * x[None].to(self.device, self.dtype) - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        return torch.cat(means), torch.cat(stds)

    decode = InstructPix2PixEditor.decode  # same VAE decoding, chunked by max_batch

    # ------------------------------------------------------------ public API

    def run(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        """Protocol entry point: knobs per request (``strength``, ``guidance_scale``,
        ``num_inference_steps``, optional ``resize``); prompt = ``output_caption``. Every request
        is checked before any work starts; one ``[3, H, W]`` image in [0, 1] per request."""
        knobs = [resolve_knobs({**self.knobs, "resize": self.resize}, r.knobs, method=self.name) for r in requests]
        strength, scale, steps = [], [], []
        for i, (r, k) in enumerate(zip(requests, knobs)):
            who = f"item {r.item_id!r}" if r.item_id else f"request {i}"
            if not isinstance(r.output_caption, str) or not r.output_caption.strip():
                raise DataRowError(f"{who}: output_caption is empty; SDEdit prompts the model with the output caption "
                                   f"(give each request its output_caption, or use a test set that has them)")
            s, g, n = k["strength"], k["guidance_scale"], k["num_inference_steps"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) <= 1.0:
                raise ValueError(f"{who}: knob strength must be a number in [0, 1], got {s!r}")
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not torch.isfinite(torch.tensor(float(g))):
                raise ValueError(f"{who}: knob guidance_scale must be a finite number, got {g!r}")
            if isinstance(n, bool) or not isinstance(n, (int, float)) or int(n) != n or int(n) < 1:
                raise ValueError(f"{who}: knob num_inference_steps must be an integer >= 1, got {n!r}")
            strength.append(float(s))
            scale.append(float(g))
            steps.append(int(n))
        images = [self.preprocess(r.image, k["resize"], index=i) for i, (r, k) in enumerate(zip(requests, knobs))]
        return self._edit_processed(images, [r.output_caption for r in requests], strength, scale, steps,
                                    [int(r.seed) for r in requests], [r.item_id for r in requests])

    def edit(self, images, output_captions: str | Sequence[str], *, strength=0.75, guidance_scale=7.5,
             num_inference_steps=50, seeds=0, resize: str | None = "paper") -> torch.Tensor:
        """SDEdit ``images`` toward ``output_captions``; float ``[N, 3, H, W]`` in [0, 1]. Every
        argument takes one value or one per image (a single image or caption is broadcast)."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        caps = [output_captions] if isinstance(output_captions, str) else list(output_captions)
        n = max(len(images), len(caps))
        cols = {name: _broadcast(v, n, name) for name, v in
                [("images", images), ("output_captions", caps), ("strength", strength),
                 ("guidance_scale", guidance_scale), ("num_inference_steps", num_inference_steps), ("seeds", seeds)]}
        reqs = [EditRequest(image=cols["images"][i], instruction="", output_caption=cols["output_captions"][i],
                            knobs={"strength": cols["strength"][i], "guidance_scale": cols["guidance_scale"][i],
                                   "num_inference_steps": int(cols["num_inference_steps"][i]), "resize": resize},
                            seed=int(cols["seeds"][i]))
                for i in range(n)]
        outs = self.run(reqs)
        sizes = {tuple(o.shape) for o in outs}
        if len(sizes) > 1:
            raise ValueError(f"edited images differ in size {sorted(sizes)}; use run() or one size per call")
        return torch.stack(outs)

    # ------------------------------------------------------------ the batched core

    @torch.no_grad()
    def _edit_processed(self, images, prompts, strength, scale, steps, seeds, item_ids) -> list[torch.Tensor]:
        n = len(images)
        outs: list[torch.Tensor | None] = [None] * n
        start = [denoising_start(steps[i], strength[i]) for i in range(n)]
        active = [i for i in range(n) if start[i] < steps[i]]
        for i in range(n):
            if start[i] >= steps[i]:  # zero denoising steps: nothing to do, the input is the edit
                outs[i] = images[i]
        if not active:
            return outs  # type: ignore[return-value]

        keys = [hash_tensor(images[i]) for i in active]
        distinct = list(OrderedDict.fromkeys(keys))
        first = {k: active[keys.index(k)] for k in distinct}
        mean, std = self.encode_posterior([images[first[k]] for k in distinct])
        post = {k: (mean[j], std[j]) for j, k in enumerate(distinct)}
        post_of = dict(zip(active, (post[k] for k in keys)))
        text = dict(zip(active, self.encode_text([prompts[i] for i in active])))
        null = self.encode_text([""])[0]

        # same size and step count share a schedule; earliest start first so chunks fill evenly
        groups: dict[tuple, list[int]] = OrderedDict()
        for i in sorted(active, key=lambda i: start[i]):
            groups.setdefault((tuple(images[i].shape), steps[i]), []).append(i)
        for (_, n_steps), idx in groups.items():
            for c0 in range(0, len(idx), self.max_batch):
                chunk = idx[c0 : c0 + self.max_batch]
                latents = self._sample(
                    torch.stack([post_of[i][0] for i in chunk]),
                    torch.stack([post_of[i][1] for i in chunk]),
                    torch.stack([text[i] for i in chunk]),
                    null,
                    [scale[i] for i in chunk],
                    [start[i] for i in chunk],
                    n_steps,
                    [seeds[i] for i in chunk],
                )
                decoded = self.decode(latents).cpu()
                check_finite(decoded, latents, [
                    f"{_who(item_ids, i)}: the model produced NaN/Inf (output caption {prompts[i]!r}, strength={strength[i]}, "
                    f"guidance_scale={scale[i]}, steps={steps[i]}, seed={seeds[i]}, dtype={self.dtype})" for i in chunk])
                for j, i in enumerate(chunk):
                    outs[i] = decoded[j]
        return outs  # type: ignore[return-value]

    def guided_eps(self, x_in: torch.Tensor, t, text_emb, null_emb, guidance_scale: Sequence[float]) -> torch.Tensor:
        """``eps_uncond + s * (eps_text - eps_uncond)`` per sample in one UNet call on
        ``[uncond rows; text rows]`` (diffusers' order); a sample with ``s == 1`` gets no uncond row."""
        b = x_in.shape[0]
        need_uncond = [j for j in range(b) if guidance_scale[j] != 1.0]
        x = x_in.to(self.dtype)
        z = torch.cat([x[need_uncond], x]) if need_uncond else x
        ctx = torch.cat([null_emb.expand(len(need_uncond), *null_emb.shape), text_emb]) if need_uncond else text_emb
        out = self.unet(z, t, encoder_hidden_states=ctx, return_dict=False)[0].float()
        eps_text = out[len(need_uncond):]
        if not need_uncond:
            return eps_text
        eps_uncond = eps_text.clone()
        eps_uncond[need_uncond] = out[: len(need_uncond)]
        s = as_scale(guidance_scale, b, like=eps_text, name="guidance_scale")
        return eps_uncond + s * (eps_text - eps_uncond)

    def _sample(self, post_mean, post_std, text_emb, null_emb, scale, start, n_steps, seeds) -> torch.Tensor:
        """One chunk: samples may start at different steps of the same ``n_steps`` schedule.
        Each start step has its own scheduler (state is per run); UNet calls are shared."""
        vae = self.components.vae
        noise = NoiseSource.from_seeds(seeds, dtype=self.dtype, device=self.device)
        # draw order per request, as diffusers for one image: posterior sample, initial noise, step noise
        z0 = (post_mean + post_std * noise.randn(post_mean.shape[1:])) * vae.config.scaling_factor
        init_noise = noise.randn(z0.shape[1:])
        z0, init_noise = z0.float(), init_noise.float()

        by_start: dict[int, list[int]] = OrderedDict()
        for j, s in enumerate(start):
            by_start.setdefault(s, []).append(j)
        runs = []  # (rows, scheduler, latents, generators, step kwargs)
        for s, rows in by_start.items():
            sched = fresh_scheduler(self.scheduler)
            sched.set_timesteps(n_steps, device=self.device)
            first = s * sched.order
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(first)
            t0 = sched.timesteps[first : first + 1].repeat(len(rows))
            x = sched.add_noise(z0[rows], init_noise[rows], t0)
            gens = [noise.generators[j] for j in rows]
            extra = _step_kwargs(sched, gens)
            runs.append([rows, sched, x, first, extra])

        timesteps = runs[0][1].timesteps
        begin = min(r[3] for r in runs)
        for k in range(begin, len(timesteps)):
            t = timesteps[k]
            live = [r for r in runs if r[3] <= k]
            x_in = torch.cat([r[1].scale_model_input(r[2], t) for r in live])
            rows = [j for r in live for j in r[0]]
            eps = self.guided_eps(x_in, t, text_emb[rows], null_emb, [scale[j] for j in rows])
            off = 0
            for r in live:
                m = len(r[0])
                r[2] = r[1].step(eps[off : off + m], t, r[2], return_dict=False, **r[4])[0]
                off += m
        out = torch.empty_like(z0)
        for rows, _, x, _, _ in runs:
            out[rows] = x.float()
        return out


def _step_kwargs(scheduler, generators) -> dict[str, Any]:
    """What diffusers' ``prepare_extra_step_kwargs`` passes: ``eta=0`` and the generators,
    each only where ``step`` accepts it."""
    import inspect

    params = inspect.signature(scheduler.step).parameters
    out: dict[str, Any] = {}
    if "eta" in params:
        out["eta"] = 0.0
    if "generator" in params:
        out["generator"] = generators
    return out


def _broadcast(value, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor) and name != "images":
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise ValueError(f"{name}: got {len(value)} values for {n} images (give 1 or {n})")
    return [value] * n


def load_sdedit(source: str | os.PathLike = "world:sd", *, device=None, dtype=torch.float32, max_batch: int = 16,
                resize: str | None = "paper", scheduler=None, local_files_only: bool | None = None, seed: int = 0,
                compile: bool = False) -> SDEditEditor:
    """An SDEdit editor on a text-to-image model: ``world:sd`` (default), a diffusers folder or hub
    id (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``), or ``tiny-t2i`` / ``sd15-t2i``
    (random weights, deterministic from ``seed``)."""
    components = load_t2i_components(source, local_files_only=local_files_only, seed=seed)
    return SDEditEditor(components, device=device, dtype=dtype, max_batch=max_batch, resize=resize,
                        scheduler=scheduler, compile=compile)


# ---------------------------------------------------------------- registry

def _register() -> None:
    from bench.methods import Knob, register_method

    def factory(model: str | None = None, device: str | None = None, **options: Any) -> SDEditEditor:
        return load_sdedit(model or "world:sd", device=device, **options)

    register_method(
        "sdedit",
        factory,
        {
            "strength": Knob("float", minimum=0.0, maximum=1.0,
                             doc="how far toward noise the input is pushed before denoising (0: input returned)"),
            "guidance_scale": Knob("float", minimum=0.0, doc="classifier-free guidance scale on the output caption"),
            "num_inference_steps": Knob("int", minimum=1,
                                        doc="scheduler steps for strength 1; int(steps * strength) of them run"),
            "resize": Knob("choice", choices=("paper", "diffusers", None),
                           doc="input resizing, as instructpix2pix's"),
        },
        default_model="world:sd",
        description="SDEdit: SD img2img prompted with the output caption (Meng et al.); "
                    "model: a text-to-image diffusers folder or hub id, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5",
        demo_model="world:sd",
        demo_grid={"strength": [0.3, 0.5, 0.7]},
        demo_knobs={"num_inference_steps": 20},
        curve_knob="strength",
        replace=True,
    )


_register()

__all__ = [
    "SDEditEditor",
    "load_sdedit",
    "load_t2i_components",
    "build_t2i_builtin",
    "validate_t2i_components",
    "as_components",
    "denoising_start",
]
