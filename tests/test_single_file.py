"""Original single-file checkpoints: export in the LDM/CompVis layout of the InstructPix2Pix release,
then load back offline through diffusers' own ``StableDiffusionInstructPix2PixPipeline.from_single_file``."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ip2p
from ip2p.editor import InstructPix2PixEditor
from ip2p.errors import ModelLoadError
from ip2p.export import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, export_single_file, unet_key_map, vae_key_map
from ip2p.models import CONFIG_DIR, build_builtin, load_components, load_single_file, openai_clip_tokenizer_dir
from tests.editor_fixtures import rand_image

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    openai_clip_tokenizer_dir()  # keep the shared tokenizer cache where it is
    root = tmp_path_factory.mktemp("single_file")
    mp = pytest.MonkeyPatch()
    mp.setenv("IP2P_CACHE", str(root / "cache"))  # built-in config folders go here
    original = build_builtin("tiny", seed=0)
    sd = {n: {k: v.clone() for k, v in getattr(original, n).state_dict().items()} for n in PARTS}
    st = export_single_file(original, root / "tiny.safetensors")
    ck = export_single_file(original, root / "tiny.ckpt")
    yield {"root": root, "original": original, "sd": sd, "st": st, "ckpt": ck}
    mp.undo()


def _assert_same_weights(env, c):
    for n in PARTS:
        got = getattr(c, n).state_dict()
        want = env["sd"][n]
        assert got.keys() == want.keys(), n
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"{n}: {bad[:5]}"


def _edit(c):
    ed = InstructPix2PixEditor(c, device="cpu", resize=None)
    return ed.edit(rand_image(16, 24, seed=3), "make it red", num_inference_steps=2, seeds=5,
                   image_guidance_scale=1.5, guidance_scale=7.5, resize=None)


@pytest.fixture(scope="module")
def reference_edit(env):
    return _edit(env["original"])


def test_layout_is_the_original_ldm_one(env):
    with safe_open(str(env["st"]), framework="pt") as f:
        keys = set(f.keys())
        shape = lambda k: tuple(f.get_slice(k).get_shape())  # noqa: E731
        assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)) for k in keys)
        # UNet: openaimodel names; 8 input channels; tiny = 2 levels x 1 layer
        assert shape(UNET_PREFIX + "input_blocks.0.0.weight") == (32, 8, 3, 3)
        for k in ("time_embed.0.weight", "time_embed.2.bias", "input_blocks.1.0.in_layers.2.weight",
                  "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.1.proj_in.weight",
                  "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.2.0.op.weight",
                  "input_blocks.3.0.skip_connection.weight", "middle_block.0.out_layers.3.weight",
                  "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight", "middle_block.2.in_layers.0.bias",
                  "output_blocks.1.1.conv.weight", "output_blocks.3.1.proj_out.weight",
                  "output_blocks.3.0.skip_connection.weight", "out.0.weight", "out.2.bias"):
            assert UNET_PREFIX + k in keys, k
        assert not any(k.startswith(UNET_PREFIX + "input_blocks.4") for k in keys)
        # VAE: encoder.down.i.block.j, mid.block_1/attn_1, decoder.up reversed, 1x1 conv attention
        for k in ("encoder.down.0.block.0.conv1.weight", "encoder.down.0.downsample.conv.weight",
                  "encoder.mid.block_1.norm1.weight", "encoder.mid.block_2.conv2.bias", "encoder.norm_out.weight",
                  "decoder.up.1.block.1.conv2.weight", "decoder.up.1.upsample.conv.weight",
                  "decoder.up.0.block.0.conv1.weight", "decoder.norm_out.bias", "quant_conv.weight",
                  "post_quant_conv.bias"):
            assert VAE_PREFIX + k in keys, k
        assert not any(k.startswith(VAE_PREFIX + "decoder.up.0.upsample") for k in keys)
        for k in ("q", "k", "v", "proj_out"):
            assert shape(f"{VAE_PREFIX}encoder.mid.attn_1.{k}.weight") == (32, 32, 1, 1)
            assert shape(f"{VAE_PREFIX}decoder.mid.attn_1.{k}.weight") == (32, 32, 1, 1)
        assert shape(TEXT_PREFIX + "text_model.embeddings.position_embedding.weight") == (77, 32)
        assert TEXT_PREFIX + "text_model.final_layer_norm.weight" in keys


def test_safetensors_round_trip(env, reference_edit):
    c = load_single_file(str(env["st"]), config="tiny", local_files_only=True)
    assert c.info["kind"] == "single_file" and c.resolution == 16
    assert (env["root"] / "cache" / "configs" / "tiny" / "model_index.json").is_file()
    _assert_same_weights(env, c)
    pub = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert pub(c.scheduler.config) == pub(env["original"].scheduler.config)
    assert c.tokenizer("a cat").input_ids == env["original"].tokenizer("a cat").input_ids
    out = _edit(c)
    assert out.shape == reference_edit.shape == (1, 3, 16, 24)
    assert torch.equal(out, reference_edit)


def test_load_editor_with_builtin_config(env, reference_edit):
    ed = ip2p.load_editor(str(env["st"]), config="tiny", local_files_only=True, device="cpu", resize=None)
    _assert_same_weights(env, ed.components)
    out = ed.edit(rand_image(16, 24, seed=3), "make it red", num_inference_steps=2, seeds=5,
                  image_guidance_scale=1.5, guidance_scale=7.5, resize=None)
    assert torch.equal(out, reference_edit)


def test_config_may_be_a_diffusers_folder(env, tmp_path):
    from tests.editor_fixtures import tiny_pipe

    tiny_pipe(seed=1).save_pretrained(str(tmp_path / "folder"))  # other weights: the file's must win
    c = load_components(str(env["st"]), config=str(tmp_path / "folder"), local_files_only=True)
    _assert_same_weights(env, c)


def test_ckpt_needs_trust_pickle_and_then_round_trips(env, reference_edit):
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_single_file(str(env["ckpt"]), config="tiny", local_files_only=True)
    with pytest.raises(ModelLoadError, match="trust"):
        ip2p.load_editor(str(env["ckpt"]), config="tiny", local_files_only=True, device="cpu")
    obj = torch.load(env["ckpt"], weights_only=True)
    assert set(obj) == {"state_dict"} and set(obj["state_dict"]) == set(load_file(str(env["st"])))
    c = load_single_file(str(env["ckpt"]), config="tiny", trust_pickle=True, local_files_only=True)
    _assert_same_weights(env, c)
    assert torch.equal(_edit(c), reference_edit)


def test_wrong_conv_in_is_a_clear_error(env):
    sd = load_file(str(env["st"]))
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    sd[key] = sd[key][:, :4].contiguous()  # a text-to-image UNet: 4 input channels
    bad = env["root"] / "t2i.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelLoadError, match=r"4 input channels.*8 in") as e:
        load_single_file(str(bad), config="tiny", local_files_only=True)
    assert "text-to-image" in str(e.value)


def test_missing_weights_is_a_clear_error(env):
    sd = {k: v for k, v in load_file(str(env["st"])).items() if "output_blocks.3." not in k}
    bad = env["root"] / "partial.safetensors"
    save_file(sd, str(bad))
    # .safetensors: found from the header, before diffusers builds anything
    with pytest.raises(ModelLoadError, match=r"does not match the architecture.*\d+ tensor\(s\) missing.*output_blocks\.3"):
        load_single_file(str(bad), config="tiny", local_files_only=True)
    # .ckpt: diffusers leaves the modules empty; still a ModelLoadError that says so
    torch.save({"state_dict": sd}, env["root"] / "partial.ckpt")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_single_file(str(env["root"] / "partial.ckpt"), config="tiny", trust_pickle=True, local_files_only=True)


def test_missing_file_is_a_clear_error(env):
    missing = env["root"] / "nope.safetensors"
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_single_file(str(missing), config="tiny", local_files_only=True)
    with pytest.raises(ModelLoadError, match="not found"):
        load_components(str(missing), config="tiny", local_files_only=True)


def test_export_dtype_and_cli(env, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ip2p.export_cli import register

    half = export_single_file(env["original"], tmp_path / "half.safetensors", dtype=torch.float16)
    sd = load_file(str(half))
    assert sd[UNET_PREFIX + "out.2.weight"].dtype == torch.float16
    assert sd[TEXT_PREFIX + "text_model.embeddings.position_ids"].dtype == torch.int64

    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep `export` a sub-command
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["export", "tiny", str(out)])
    assert r.exit_code == 0, r.output
    assert load_file(str(out)).keys() == load_file(str(env["st"])).keys()
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(out)).values(), load_file(str(env["st"])).values()))


def test_mapping_covers_sd15_sizes_and_matches_diffusers_converter():
    """SD 1.5 sizes, on the meta device: every parameter maps, to the names diffusers converts back."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    cfg = json.loads((CONFIG_DIR / "sd15.json").read_text())
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg["unet"]), AutoencoderKL(**cfg["vae"])
    u = unet.state_dict()
    um = unet_key_map(unet.config, u)
    assert len(um) == 686
    for k in ("output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight",
              "input_blocks.9.0.op.weight", "output_blocks.11.0.skip_connection.weight",
              "input_blocks.11.0.out_layers.3.weight", "middle_block.1.proj_out.weight"):
        assert k in um.values(), k
    # tag each LDM entry with its diffusers name; diffusers' converter must map it back to that name
    back = convert_ldm_unet_checkpoint({UNET_PREFIX + ldm: name for name, ldm in um.items()}, dict(unet.config))
    assert back == {name: name for name in u}

    v = vae.state_dict()
    vm = vae_key_map(vae.config, v)
    assert len(vm) == 248 and "decoder.up.1.block.0.nin_shortcut.weight" in vm.values()

    class Tag(str):
        shape = (1,)  # lets the converter's attention reshape step pass over a name

    back = convert_ldm_vae_checkpoint({VAE_PREFIX + ldm: Tag(name) for name, ldm in vm.items()}, dict(vae.config))
    assert back == {name: name for name in v}
