"""Published weights into the library's models (slideformer.weights, slideformer::io::import_weights).

- Official Slide-Transformer checkpoints: a state dict with the official names and shapes (random
  values, every tensor nudged, the frozen one-hot shift included), wrapped as the official
  main.py saves it (model, optimizer, lr_scheduler, a yacs CfgNode under "config"), imported into
  slide_swin_tiny / small / base from Python and from C++; the expected logits come from
  official_logits below, a float64 transcription of the official forward that reads the official
  names directly (no mapping code involved).
- timm 1.0.31 mvitv2_tiny (seeded, every parameter nudged), saved as safetensors and with
  torch.save (timm's train.py layout, and the original MViTv2 layout that timm's
  checkpoint_filter_fn converts), imported in C++ (the library's mapping): timm's logits within
  1e-4 relative, eval, 224 x 224. (test_model_parity.py maps the same model from Python.)
"""
import argparse
import collections
import pathlib
import re
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from yacs.config import CfgNode

import slideformer
import slideformer.weights as weights
from conftest import LIBRARY, nudged_timm_reference

TOOL = LIBRARY.parent.parent / "bin" / "model_parity"
# embed_dim, depths, heads of the official configs (cfgs/slide_swin_{t,s,b}.yaml): k = 3, two
# slide stages, then global attention over the 14 x 14 and 7 x 7 maps.
OFFICIAL = {"slide_swin_tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]), "slide_swin_small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
            "slide_swin_base": (128, [2, 2, 18, 2], [4, 8, 16, 32])}
KA, SLIDE_STAGES, CLASSES = 3, 2, 1000


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def run_tool(tmp_path, preset, weights_path, images, family=None):
    """The C++ model's logits for `images` (model_parity), its weights from `weights_path`."""
    torch.save(images, tmp_path / "images.pt")
    command = [str(TOOL), preset, str(weights_path), str(tmp_path / "images.pt"), str(tmp_path / "logits.pt"), "-"]
    result = subprocess.run(command + ([family] if family else []), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return torch.load(tmp_path / "logits.pt")


def tool_error(tmp_path, preset, weights_path, family):
    torch.save(torch.zeros(1, 3, 224, 224), tmp_path / "images.pt")
    result = subprocess.run([str(TOOL), preset, str(weights_path), str(tmp_path / "images.pt"),
                             str(tmp_path / "logits.pt"), "-", family], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    return result.stderr.strip()


# --- the official Slide-Transformer --------------------------------------------------------------

def official_index(size):
    """WindowAttention.relative_position_index of the official code for a size x size window."""
    coords = torch.stack(torch.meshgrid([torch.arange(size), torch.arange(size)], indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += size - 1
    relative[:, :, 1] += size - 1
    relative[:, :, 0] *= 2 * size - 1
    return relative.sum(-1)


def official_state(preset, seed=0):
    """A state dict with the names and shapes of the official SlideSwinTransformer, random values
    at scales that keep every attention far from uniform."""
    embed, depths, heads = OFFICIAL[preset]
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale):
        return torch.randn(*shape, generator=generator) * scale

    state = collections.OrderedDict()

    def linear(name, out, inp, bias=True):
        state[name + ".weight"] = rand(out, inp, scale=inp ** -0.5)
        if bias:
            state[name + ".bias"] = rand(out, scale=0.1)

    def norm(name, dim):
        state[name + ".weight"] = 1 + rand(dim, scale=0.1)
        state[name + ".bias"] = rand(dim, scale=0.1)

    state["patch_embed.proj.weight"] = rand(embed, 3, 4, 4, scale=0.2)
    state["patch_embed.proj.bias"] = rand(embed, scale=0.1)
    norm("patch_embed.norm", embed)
    dim, size, taps = embed, 56, KA * KA
    for stage, (depth, head_count) in enumerate(zip(depths, heads)):
        head_dim = dim // head_count
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            norm(prefix + "norm1", dim)
            linear(prefix + "attn.qkv", 3 * dim, dim)
            if stage < SLIDE_STAGES:
                one_hot = torch.zeros(taps, KA, KA)
                for n in range(taps):
                    one_hot[n, n // KA, n % KA] = 1
                state[prefix + "attn.dep_conv.weight"] = one_hot.unsqueeze(1).repeat(head_dim, 1, 1, 1) + rand(
                    taps * head_dim, 1, KA, KA, scale=0.05)
                state[prefix + "attn.dep_conv.bias"] = rand(taps * head_dim, scale=0.1)
                state[prefix + "attn.dep_conv1.weight"] = rand(taps * head_dim, 1, KA, KA, scale=0.3)
                state[prefix + "attn.dep_conv1.bias"] = rand(taps * head_dim, scale=0.1)
                state[prefix + "attn.relative_position_bias_table"] = rand(1, head_count, 1, taps, 1, 1, scale=1.0)
            else:
                state[prefix + "attn.relative_position_bias_table"] = rand((2 * size - 1) ** 2, head_count, scale=1.0)
                state[prefix + "attn.relative_position_index"] = official_index(size)
            linear(prefix + "attn.proj", dim, dim)
            norm(prefix + "norm2", dim)
            linear(prefix + "mlp.fc1", 4 * dim, dim)
            linear(prefix + "mlp.fc2", dim, 4 * dim)
        if stage + 1 < len(depths):
            norm(f"layers.{stage}.downsample.norm", 4 * dim)
            linear(f"layers.{stage}.downsample.reduction", 2 * dim, 4 * dim, bias=False)
            dim, size = 2 * dim, size // 2
    norm("norm", dim)
    linear("head", CLASSES, dim)
    return state


def save_as_official_main(state, path):
    """As the official main.py's save_checkpoint writes it."""
    config = CfgNode({"MODEL": CfgNode({"TYPE": "slide_swin", "NAME": "slide_swin_tiny"}),
                      "TRAIN": CfgNode({"EPOCHS": 300, "BASE_LR": 1e-3})})
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
    torch.save({"model": state, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 299},
                "max_accuracy": 82.1, "epoch": 299, "config": config}, path)


def slide_attention(x, state, prefix, size, heads):
    """SlideAttention.forward of the official code: depthwise convolutions shift the keys and
    values (the frozen dep_conv plus the learned dep_conv1), the table is added to the keys."""
    batch, tokens, dim = x.shape
    head_dim = dim // heads
    qkv = F.linear(x, state[prefix + "qkv.weight"], state[prefix + "qkv.bias"]).view(batch, size, size, 3 * dim)
    f = qkv.permute(0, 3, 1, 2).reshape(batch * heads, 3 * head_dim, size, size)
    q = (f[:, :head_dim] * head_dim ** -0.5).reshape(batch, heads, head_dim, 1, size, size)

    def shift(t):
        out = sum(F.conv2d(t, state[prefix + name + ".weight"], state[prefix + name + ".bias"], padding=KA // 2,
                           groups=head_dim) for name in ("dep_conv", "dep_conv1"))
        return out.reshape(batch, heads, head_dim, KA * KA, size, size)

    k = shift(f[:, head_dim:2 * head_dim]) + state[prefix + "relative_position_bias_table"]
    v = shift(f[:, 2 * head_dim:])
    attention = (q * k).sum(2, keepdim=True).softmax(dim=3)
    out = (attention * v).sum(3).reshape(batch, dim, size, size).permute(0, 2, 3, 1).reshape(batch, tokens, dim)
    return F.linear(out, state[prefix + "proj.weight"], state[prefix + "proj.bias"])


def window_attention(x, state, prefix, size, heads):
    """WindowAttention.forward over one window that is the whole map, with the Swin table."""
    batch, tokens, dim = x.shape
    qkv = F.linear(x, state[prefix + "qkv.weight"], state[prefix + "qkv.bias"])
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attention = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)
    table = state[prefix + "relative_position_bias_table"]
    bias = table[official_index(size).view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
    out = ((attention + bias.unsqueeze(0)).softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return F.linear(out, state[prefix + "proj.weight"], state[prefix + "proj.bias"])


def official_logits(state, images, preset):
    """SlideSwinTransformer.forward in float64, from the official state dict."""
    embed, depths, heads = OFFICIAL[preset]
    s = {name: t.double() if t.is_floating_point() else t for name, t in state.items()}

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"])

    x = F.conv2d(images.double(), s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=4)
    size = x.shape[-1]
    x = norm(x.flatten(2).transpose(1, 2), "patch_embed.norm")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            attend = slide_attention if stage < SLIDE_STAGES else window_attention
            x = x + attend(norm(x, prefix + "norm1"), s, prefix + "attn.", size, heads[stage])
            hidden = F.gelu(F.linear(norm(x, prefix + "norm2"), s[prefix + "mlp.fc1.weight"], s[prefix + "mlp.fc1.bias"]))
            x = x + F.linear(hidden, s[prefix + "mlp.fc2.weight"], s[prefix + "mlp.fc2.bias"])
        if stage + 1 < len(depths):  # PatchMerging
            grid = x.view(x.shape[0], size, size, -1)
            x = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
            size //= 2
            x = norm(x.view(x.shape[0], size * size, -1), f"layers.{stage}.downsample.norm")
            x = F.linear(x, s[f"layers.{stage}.downsample.reduction.weight"])
    x = norm(x, "norm").mean(1)
    return F.linear(x, s["head.weight"], s["head.bias"])


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
    """The official-format tiny checkpoint, its images and their expected logits."""
    path = tmp_path_factory.mktemp("official") / "ckpt_epoch_299.pth"
    state = official_state("slide_swin_tiny")
    save_as_official_main(state, path)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    return path, state, images, official_logits(state, images, "slide_swin_tiny")


def test_the_official_reference_is_not_degenerate(official_tiny):
    """Attention far from uniform, logits spread: a mapping error cannot hide in them."""
    _, _, _, expected = official_tiny
    assert expected.std() > 0.5 and (expected[0] - expected[1]).abs().max() > 0.5


def test_official_checkpoint_imports_into_the_python_model(official_tiny):
    path, _, images, expected = official_tiny
    model = slideformer.nn.SlideTransformer(slideformer.nn.preset("slide_swin_tiny")).eval()
    weights.import_weights(model, path, "slide-transformer")
    with torch.no_grad():
        assert relative_error(model(images), expected) < 1e-4


@pytest.mark.parametrize("preset", list(OFFICIAL))
def test_official_checkpoints_import_into_the_cpp_models(tmp_path, official_tiny, preset):
    if preset == "slide_swin_tiny":
        path, _, images, expected = official_tiny
    else:
        state = official_state(preset, seed=1)
        path = tmp_path / "ckpt.pth"
        save_as_official_main(state, path)
        images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        expected = official_logits(state, images, preset)
    assert relative_error(run_tool(tmp_path, preset, path, images, "slide-transformer"), expected) < 1e-4


def test_official_checkpoints_that_do_not_fit_are_refused_with_the_mismatches(tmp_path, official_tiny):
    path, state, _, _ = official_tiny
    model = slideformer.nn.SlideTransformer(slideformer.nn.preset("slide_swin_tiny"))
    bad = tmp_path / "bad.pth"
    changed = collections.OrderedDict(state)
    changed["head.weight"], changed["head.bias"] = state["head.weight"][:10], state["head.bias"][:10]
    del changed["norm.weight"]
    save_as_official_main(changed, bad)
    message = (f"{bad}: weights do not fit the model: missing 'norm.weight'; 'head.weight' has shape [10, 768], "
               "the model's is [1000, 768] (and 1 more tensors of another shape)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        weights.import_weights(model, bad, "slide-transformer")
    assert tool_error(tmp_path, "slide_swin_tiny", bad, "slide-transformer") == f"model_parity: {message}"
    small = tool_error(tmp_path, "slide_swin_small", path, "slide-transformer")
    assert small.startswith(f"model_parity: {path}: weights do not fit the model: missing 'stages.2.6.norm1.weight', ")
    assert tool_error(tmp_path, "mvitv2_tiny", path, "timm").startswith(
        f"model_parity: {path}: not timm weights: ")


# --- timm's MViTv2 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_tiny():
    return nudged_timm_reference("mvitv2_tiny")


def as_original_mvit(state):
    """timm's names as the original MViTv2 code has them (its checkpoints' "model_state")."""
    depths = [1, 2, 5, 2]  # mvitv2_tiny
    starts = [sum(depths[:s]) for s in range(len(depths))]
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "stages":
            rest = ".".join(parts[4:]).replace("shortcut_proj_attn.", "proj.")
            name = f"blocks.{starts[int(parts[1])] + int(parts[3])}.{rest}"
        out[name.replace("head.fc.", "head.projection.")] = tensor
    return out


@pytest.mark.parametrize("layout", ["safetensors", "timm train.py", "original MViTv2"])
def test_timm_mvitv2_tiny_imports_in_cpp_with_timms_logits(tmp_path, timm_tiny, layout):
    state, images, expected = timm_tiny
    path = tmp_path / "weights"
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    elif layout == "timm train.py":  # timm's train.py checkpoint: arguments as a Namespace, EMA weights
        torch.save({"epoch": 10, "arch": "mvitv2_tiny", "state_dict": state, "version": 2,
                    "args": argparse.Namespace(lr=0.1, model="mvitv2_tiny"), "metric": 0.5}, path)
    else:
        torch.save({"model_state": as_original_mvit(state), "epoch": 300}, path)
    assert relative_error(run_tool(tmp_path, "mvitv2_tiny", path, images, "timm"), expected) < 1e-4


def test_position_tables_of_the_official_code_and_of_earlier_releases_map_to_the_module(tmp_path):
    """absolute_pos_embed (1, Y*X, C) and this library's earlier name, absolute_position (the
    SlideTransformer's own tensor then), become the AbsolutePositionEmbedding's weight."""
    torch.manual_seed(0)
    model = slideformer.nn.SlideTransformer(slideformer.nn.fashion()).eval()
    table = model.absolute_position.weight.detach()
    official = weights.map_weights("slide-transformer", {"absolute_pos_embed": table.flatten(1, 2)}, model.state_dict())
    assert list(official) == ["absolute_position.weight"] and torch.equal(official["absolute_position.weight"], table)
    earlier = {("absolute_position" if name == "absolute_position.weight" else name): tensor
               for name, tensor in model.state_dict().items()}
    save_file({name: tensor.contiguous() for name, tensor in earlier.items()}, tmp_path / "earlier.safetensors")
    loaded = weights.import_weights(slideformer.nn.SlideTransformer(slideformer.nn.fashion()).eval(),
                                    tmp_path / "earlier.safetensors", "slideformer")
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_every_row_of_the_tables_is_documented():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "pretrained.md").read_text().replace("\\|", "|")
    for source in weights.SOURCES:
        rows = weights.mapping_table(source)
        assert rows and all(len(row) == 3 and row[0] and row[2] for row in rows)
        if source != "slideformer":
            for pattern, target, _ in rows:
                assert f"`{pattern}`" in text and (not target or f"`{target}`" in text), pattern
    with pytest.raises(ValueError, match="unknown weight source 'hub' \\(slideformer, slide-transformer or timm\\)"):
        weights.mapping_table("hub")


# --- other input sizes ---------------------------------------------------------------------------
# The C++ models are built for 224 and given 256 x 256 images: the global stages' Swin tables are
# resized at run time (bicubic), MViTv2's decomposed tables too (linear). The expected logits come
# from the peers' own resizing: timm's resize_rel_pos_bias_table_simple applied to the official
# state, run by the float64 transcription of the official forward at 256; timm's mvitv2_tiny built
# for 256 with the 224 weights through its checkpoint_filter_fn.

def test_official_weights_at_256_give_the_official_forward_with_tables_resized_as_timm_does(tmp_path, official_tiny):
    from timm.layers import resize_rel_pos_bias_table_simple
    path, state, _, _ = official_tiny
    _, depths, heads = OFFICIAL["slide_swin_tiny"]
    resized = collections.OrderedDict(state)
    for stage in range(SLIDE_STAGES, len(depths)):
        size = 256 // 4 // 2 ** stage
        for block in range(depths[stage]):
            name = f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
            resized[name] = resize_rel_pos_bias_table_simple(state[name], (size, size),
                                                             ((2 * size - 1) ** 2, heads[stage]))
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    expected = official_logits(resized, images, "slide_swin_tiny")
    assert relative_error(run_tool(tmp_path, "slide_swin_tiny", path, images, "slide-transformer"), expected) < 1e-4


def test_timm_mvitv2_tiny_at_256_gives_timms_logits(tmp_path, timm_tiny):
    import timm
    from timm.models.mvitv2 import checkpoint_filter_fn
    state, _, _ = timm_tiny
    reference = timm.create_model("mvitv2_tiny", img_size=256).eval()
    reference.load_state_dict(checkpoint_filter_fn({k: v.clone() for k, v in state.items()}, reference))
    assert reference.stages[0].blocks[0].attn.rel_pos_h.shape[0] != state["stages.0.blocks.0.attn.rel_pos_h"].shape[0]
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference(images)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    assert relative_error(run_tool(tmp_path, "mvitv2_tiny", path, images, "timm"), expected) < 1e-4
