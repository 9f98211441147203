"""The video MViT (slideformer::nn::VideoMViT) against torchvision 0.26's mvit_v1_b and mvit_v2_s,
and its TorchScript export. tests/tools/model_parity.cpp --video builds the preset for a small clip
(4 x 64 x 64: a 2 x 16 x 16 token grid, every stage still pooled), loads torchvision's state dict
under this library's names (mapped here, by name) and writes its logits and its export.
torchvision's models are built for the same clip (random initialisation, fixed seed, every
parameter nudged so that none sits at a neutral value), in eval mode."""
import re
import subprocess

import pytest
import torch
import torchvision

from conftest import LIBRARY

TOOL = LIBRARY.parent.parent / "bin" / "model_parity"
FRAMES, SIZE = 4, 64
MEAN, STD = 0.45, 0.225

# torchvision's names -> this library's (docs/modules.md, "Video MViT").
NAMES = [
    (r"conv_proj\.(weight|bias)", r"patch_embed.\1"),
    (r"pos_encoding\.class_token", "class_token"),
    (r"pos_encoding\.spatial_pos", "spatial_position"),
    (r"pos_encoding\.temporal_pos", "temporal_position"),
    (r"pos_encoding\.class_pos", "class_position"),
    (r"blocks\.(\d+)\.attn\.project\.0\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.attn\.pool_([qkv])\.pool\.weight", r"blocks.\1.attn.pool_\2.weight"),
    (r"blocks\.(\d+)\.attn\.pool_([qkv])\.norm_act\.0\.(weight|bias)", r"blocks.\1.attn.norm_\2.\3"),
    (r"blocks\.(\d+)\.attn\.rel_pos_h", r"blocks.\1.attn.relative_position.height"),
    (r"blocks\.(\d+)\.attn\.rel_pos_w", r"blocks.\1.attn.relative_position.width"),
    (r"blocks\.(\d+)\.attn\.rel_pos_t", r"blocks.\1.attn.relative_position.time"),
    (r"blocks\.(\d+)\.mlp\.0\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.3\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"blocks\.(\d+)\.project\.(weight|bias)", r"blocks.\1.shortcut_proj.\2"),
    (r"blocks\.(\d+)\.((norm1|norm2|attn\.qkv)\.(weight|bias))", r"blocks.\1.\2"),
    (r"head\.1\.(weight|bias)", r"head.\1"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]


def library_name(name):
    for pattern, replacement in NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no mapping for torchvision's {name}")


def small_reference(name, monkeypatch):
    """torchvision's preset `name` (seed 0) built for FRAMES x SIZE x SIZE clips: the presets pass
    their own 16 x 224 x 224 to the builder, which is given the small clip instead."""
    build = torchvision.models.video.mvit._mvit

    def for_small_clips(**kwargs):
        return build(**{**kwargs, "spatial_size": (SIZE, SIZE), "temporal_size": FRAMES})

    monkeypatch.setattr(torchvision.models.video.mvit, "_mvit", for_small_clips)
    torch.manual_seed(0)
    return getattr(torchvision.models.video, name)()


@pytest.mark.parametrize("name,count", [("mvit_v1_b", 36_610_672), ("mvit_v2_s", 34_537_744)])
def test_torchvision_has_the_parameter_counts_of_the_presets(name, count):
    # The C++ presets are checked against the same figures (tests/cpp/test_mvit.cpp).
    assert sum(p.numel() for p in getattr(torchvision.models.video, name)().parameters()) == count


@pytest.mark.parametrize("name", ["mvit_v1_b", "mvit_v2_s"])
def test_logits_match_torchvision_and_the_export_matches_the_model(tmp_path, monkeypatch, name):
    reference = small_reference(name, monkeypatch).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        clips = torch.rand(2, 3, FRAMES, SIZE, SIZE)
        expected = reference((clips - MEAN) / STD)
    weights = {library_name(key): value.contiguous() for key, value in reference.state_dict().items()}
    torch.save(weights, tmp_path / "weights.pt")
    torch.save((clips - MEAN) / STD, tmp_path / "clips.pt")
    result = subprocess.run([str(TOOL), name, "--video", str(FRAMES), str(SIZE), str(tmp_path / "weights.pt"),
                             str(tmp_path / "clips.pt"), str(tmp_path / "logits.pt"), str(tmp_path / "export.pt")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    logits = torch.load(tmp_path / "logits.pt")
    assert logits.shape == (2, 400)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    with torch.no_grad():
        scripted = torch.jit.load(str(tmp_path / "export.pt"))(clips)  # the export takes [0, 1] clips
    torch.testing.assert_close(scripted, logits, rtol=1e-5, atol=1e-5)


def test_the_tool_names_a_weight_that_does_not_fit(tmp_path, monkeypatch):
    reference = small_reference("mvit_v2_s", monkeypatch)
    weights = {library_name(key): value for key, value in reference.state_dict().items()}
    weights["blocks.0.attn.relative_position.time"] = weights["blocks.0.attn.relative_position.time"][:2]
    torch.save(weights, tmp_path / "weights.pt")
    result = subprocess.run([str(TOOL), "mvit_v2_s", "--video", str(FRAMES), str(SIZE), str(tmp_path / "weights.pt"),
                             "x", "y", "z"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "blocks.0.attn.relative_position.time: shape [2, 96], the model has [3, 96]" in result.stderr
