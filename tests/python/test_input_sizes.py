"""The models at input sizes other than their own (docs/pretrained.md, "Input sizes").

- The Python modules (slideformer.nn) against the C++ ones (tests/tools/model_parity.cpp
  --features): logits and stage outputs (forward_features) at 192, 256, 320 and a non-square
  256 x 320 (besides the own 224) for slide_swin_tiny- and mvitv2_tiny-class models (the presets'
  widths, heads, kernels and tables, fewer blocks: seconds, not minutes), and the fashion presets
  (absolute position tables) at 20, 36 and 28 x 40. Float32, relative error (Frobenius) below
  1e-5: both sides run the same aten kernels, so what differs is a resizing of another axis, size
  or mode, not rounding.
- The C++ TorchScript export (made at the model's own size) against the Python modules at every
  size, within 1e-5 relative.
- The resizings against timm's own functions: the Swin table (resize_rel_pos_bias_table_simple
  with timm's index) and the absolute table (resample_abs_pos_embed), bit for bit.
C++ alone (training at other sizes, the caches, the TorchScript exports): tests/cpp/test_input_sizes.cpp.
"""
import json
import subprocess

import pytest
import torch
import torch.jit._pickle  # restore_type_tag, build_tensorlist: the typed lists the tool writes
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_rel import gen_relative_position_index, resize_rel_pos_bias_table_simple

from slideformer import nn as snn
from conftest import LIBRARY

TOOL = LIBRARY.parent.parent / "bin" / "model_parity"
IMAGENET_SIZES = [(224, 224), (192, 192), (256, 256), (320, 320), (256, 320)]
FASHION_SIZES = [(28, 28), (20, 20), (36, 36), (28, 40)]


def fewer_blocks(preset, depths):
    config = snn.preset(preset)
    config.depths = depths
    return config


MODELS = {
    "slide_swin_tiny": (lambda: fewer_blocks("slide_swin_tiny", [1, 1, 2, 1]), IMAGENET_SIZES),
    "mvitv2_tiny": (lambda: fewer_blocks("mvitv2_tiny", [1, 2, 1, 1]), IMAGENET_SIZES),
    "fashion": (snn.fashion, FASHION_SIZES),
    "fashion_mvit": (snn.fashion_mvit, FASHION_SIZES),
}


def cpp_features(tmp_path, config, images):
    """The C++ model of `config` (seed 0, eval): its state, and per batch its logits and stage outputs."""
    torch.save({"images": images}, tmp_path / "inputs.pt")
    description = json.dumps({"family": config.FAMILY, "options": config.to_options()})
    result = subprocess.run([str(TOOL), description, "--features", str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with torch.serialization.safe_globals([torch.jit._pickle.restore_type_tag, torch.jit._pickle.build_tensorlist]):
        return torch.load(tmp_path / "out.pt")


def cpp_export(tmp_path, config):
    """The TorchScript export (from [0, 1] images) of the same C++ model (seed 0)."""
    torch.save(torch.zeros(1, config.in_channels, config.image_size, config.image_size), tmp_path / "own.pt")
    description = json.dumps({"family": config.FAMILY, "options": config.to_options()})
    result = subprocess.run([str(TOOL), description, "-", str(tmp_path / "own.pt"), str(tmp_path / "own_logits.pt"),
                             str(tmp_path / "export.pt")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return torch.jit.load(str(tmp_path / "export.pt"))


def stage_shapes(config, batch, rows, cols):
    """(B, C_i, H_i, W_i): the patch embedding's map ceil(side / patch), halved (rounding up) by
    each stage after the first, the width doubled."""
    shapes = []
    rows, cols = -(-rows // config.patch_size), -(-cols // config.patch_size)
    for stage in range(len(config.depths)):
        if stage > 0:
            rows, cols = -(-rows // 2), -(-cols // 2)
        shapes.append((batch, config.embed_dim << stage, rows, cols))
    return shapes


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("name", MODELS)
def test_python_modules_match_the_cpp_ones_at_other_sizes(tmp_path, name):
    make_config, sizes = MODELS[name]
    config = make_config()
    torch.manual_seed(3)
    images = [torch.randn(2, config.in_channels, rows, cols) for rows, cols in sizes]
    cpp = cpp_features(tmp_path, config, images)
    model = snn.build(config).eval()
    model.load_state_dict(cpp["state"])
    with torch.no_grad():
        for (rows, cols), x, logits, features in zip(sizes, images, cpp["logits"], cpp["features"]):
            assert relative_error(model(x), logits) < 1e-5, (rows, cols)
            python_features = model.forward_features(x)
            assert [tuple(f.shape) for f in features] == stage_shapes(config, 2, rows, cols), (rows, cols)
            assert [f.shape for f in python_features] == [f.shape for f in features]
            for stage, (actual, expected) in enumerate(zip(python_features, features)):
                assert relative_error(actual, expected) < 1e-5, (rows, cols, stage)
            assert torch.equal(python_features[-1], model.forward_tokens(x).permute(0, 3, 1, 2))
    # The export of the checkpoint's size runs at the others (its tables resized in TorchScript).
    exported = cpp_export(tmp_path, config)
    mean = torch.tensor(config.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(config.input_std).view(1, -1, 1, 1)
    with torch.no_grad():
        for (rows, cols), x in zip(sizes, images):
            unit = x.sigmoid()
            assert relative_error(exported(unit), model((unit - mean) / std)) < 1e-5, (rows, cols)


def test_swin_table_is_resized_as_timm_resizes_it():
    torch.manual_seed(4)
    attn = snn.MultiHeadAttention(8, 2, relative_position_size=3)
    with torch.no_grad():
        bias = attn.relative_position_bias(4, 6)
        table = resize_rel_pos_bias_table_simple(attn.relative_position_table, (4, 6), (7 * 11, 2))
        expected = table[gen_relative_position_index((4, 6)).view(-1)].view(24, 24, 2).permute(2, 0, 1)
        assert torch.equal(bias, expected.unsqueeze(0))
        assert attn(torch.randn(2, 24, 8), 4, 6).shape == (2, 24, 8)
    with pytest.raises(ValueError, match="got 8 tokens, not a 3x3 map: give the map's rows and cols"):
        attn(torch.randn(2, 8, 8))


def test_absolute_table_is_resized_as_timm_resamples_position_embeddings():
    torch.manual_seed(5)
    embedding = snn.AbsolutePositionEmbedding(14, 14, 48)
    with torch.no_grad():
        for rows, cols in [(18, 22), (9, 7)]:  # up and down: timm antialiases by default
            expected = resample_abs_pos_embed(embedding.weight.reshape(1, 196, 48), new_size=[rows, cols],
                                              old_size=[14, 14], num_prefix_tokens=0)
            assert torch.equal(embedding(torch.zeros(1, rows, cols, 48)), expected.view(1, rows, cols, 48))
        assert torch.equal(embedding(torch.zeros(1, 14, 14, 48)), embedding.weight)
    with pytest.raises(ValueError, match=r"input must be \(B, Y, X, 48\) \(the table is for 14x14"):
        embedding(torch.zeros(1, 14, 14, 47))
