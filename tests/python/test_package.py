"""The Python package: import, the typed operator wrappers, the nn modules and presets, checkpoint
descriptions. Runs against the source tree, and again against a pip-installed package
(test_package_install.py)."""
import inspect
import os
import pathlib
import subprocess
import sys
import typing

import pytest
import torch

import slideformer
from conftest import INSTALLED
from slideformer import nn as snn


def test_import_loads_the_library_and_reports_its_version():
    assert torch.ops.slideformer.build_info() == slideformer.build_info()
    assert slideformer.build_info().startswith(f"slideformer {slideformer.__version__} (torch 2.11")
    package_dir = pathlib.Path(slideformer.__file__).parent
    if INSTALLED:  # the library of the installed package, not a build directory's
        assert pathlib.Path(slideformer.library_path) == package_dir / "lib" / "libslideformer.so"
        assert (pathlib.Path(slideformer.cmake_prefix_path) / "lib" / "cmake" / "slideformer"
                / "slideformerConfig.cmake").is_file()
        # Every library of the CMake package travels in the wheel, beside the operators'.
        for layer in ("nn", "distributed", "io", "data"):
            assert (package_dir / "lib" / f"libslideformer_{layer}.so").is_file(), layer


def test_a_missing_library_fails_the_import_with_a_clear_message(tmp_path):
    env = dict(os.environ, SLIDEFORMER_LIBRARY=str(tmp_path / "nowhere.so"))
    path = [str(pathlib.Path(slideformer.__file__).parents[1])]
    code = f"import sys; sys.path[:0] = {path!r}; import slideformer"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert f"slideformer: the operator library is not at {tmp_path / 'nowhere.so'} (SLIDEFORMER_LIBRARY)" in result.stderr


def test_import_loads_the_operator_library_alone():
    """`import slideformer` maps libslideformer.so and no other slideformer library (the modules,
    the distributed code, the weight files, the data); slideformer.nn then maps the modules'."""
    path = [str(pathlib.Path(slideformer.__file__).parents[1])]
    code = (f"import pathlib, re, sys; sys.path[:0] = {path!r}\n"
            "def loaded():\n"
            "    names = {pathlib.Path(line.split()[-1]).name for line in open('/proc/self/maps') if '/' in line}\n"
            "    return sorted({re.sub(r'\\.so[.0-9]*$', '.so', n) for n in names if n.startswith('libslideformer')})\n"
            "import slideformer\nprint(loaded())\nslideformer.nn.preset('fashion')\nprint(loaded())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['libslideformer.so']", "['libslideformer.so', 'libslideformer_nn.so']"]


@pytest.mark.parametrize("wrapper", [slideformer.ops.attention, slideformer.ops.slide_attention,
                                     slideformer.ops.slide_attention_nd])
def test_wrappers_are_typed_and_documented(wrapper):
    hints = typing.get_type_hints(wrapper)
    assert hints["return"] is torch.Tensor and hints["query"] is torch.Tensor
    assert "(B, H," in inspect.getdoc(wrapper)
    schema = getattr(torch.ops.slideformer, wrapper.__name__).default._schema
    assert list(inspect.signature(wrapper).parameters) == [a.name for a in schema.arguments]


def test_wrappers_call_the_operators_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 6, 8, dtype=torch.double, requires_grad=True) for _ in range(3))
    weight = torch.randn(8, 9, 9, dtype=torch.double, requires_grad=True)
    out = slideformer.ops.slide_attention(q, k, v, 3, dilation=2, shift_weight=weight, border="clamp")
    expected = torch.ops.slideformer.slide_attention(q, k, v, 3, 2, None, weight, None, "clamp", None)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert weight.grad is not None and q.grad.abs().sum() > 0
    video = q.unsqueeze(2)  # (B, H, T = 1, Y, X, D)
    out = slideformer.ops.slide_attention_nd(video, video, video, [1, 3, 3], causal=True, border="clamp")
    expected = torch.ops.slideformer.slide_attention_nd(video, video, video, [1, 3, 3], [1], None, None, None,
                                                        "clamp", True, None)
    assert torch.equal(out, expected)
    bias = torch.randn(1, 3, 4, 4, dtype=torch.double)
    a = slideformer.ops.attention(q[:, :, 0, :4], k[:, :, 0, :4], v[:, :, 0, :4], bias, is_causal=True, scale=0.5)
    logits = (q[:, :, 0, :4] @ k[:, :, 0, :4].transpose(-1, -2)) * 0.5 + bias
    logits = logits.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(a, logits.softmax(-1) @ v[:, :, 0, :4])


def test_operator_errors_reach_python():
    q = torch.randn(1, 1, 4, 4, 8)
    with pytest.raises(RuntimeError, match="slideformer::slide_attention: kernel_size must be odd and >= 1, got 4"):
        slideformer.ops.slide_attention(q, q, q, 4)


@pytest.mark.parametrize("name,total,trainable", [
    ("slide_swin_tiny", 28348834, 28338466),
    ("slide_swin_small", 49747378, 49737010),
    ("slide_swin_base", 87948704, 87938336),
    ("fashion", 240676, 238084),
    ("mvitv2_tiny", 24173320, 24173320),  # timm's counts
    ("mvitv2_small", 34870216, 34870216),
    ("mvitv2_base", 51472744, 51472744),
    ("fashion_mvit", 338954, 338954),
])
def test_presets_have_the_reference_parameter_counts(name, total, trainable):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = snn.build(snn.preset(name))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'swin_huge', expected one of slide_swin_tiny"):
        snn.preset("swin_huge")


def test_relative_position_index_and_merge_patches_match_brute_force():
    size = 3
    index = snn.relative_position_index(size)
    for i in range(size * size):
        for j in range(size * size):
            dy, dx = i // size - j // size + size - 1, i % size - j % size + size - 1
            assert index[i, j] == dy * (2 * size - 1) + dx
    x = torch.randn(2, 5, 3, 4)
    merged = snn.merge_patches(x)
    assert merged.shape == (2, 3, 2, 16)
    padded = torch.zeros(2, 6, 4, 4)
    padded[:, :5, :3] = x
    for r in range(3):
        for c in range(2):
            expected = torch.cat([padded[:, 2 * r, 2 * c], padded[:, 2 * r + 1, 2 * c],
                                  padded[:, 2 * r, 2 * c + 1], padded[:, 2 * r + 1, 2 * c + 1]], -1)
            assert torch.equal(merged[:, r, c], expected)


def test_drop_path_keeps_or_zeroes_whole_samples():
    x = torch.ones(2000, 3, 4)
    assert snn.drop_path(x, 0.25, training=False) is x
    out = snn.drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    assert 0.2 < (per_sample[:, 0] == 0).double().mean() < 0.3


def reference_slide_block(attn, x):
    """SlideAttention written out with the aten reference of the operator (test_slide_attention's
    Slide-Transformer composite: one-hot conv + learned conv)."""
    from test_slide_attention import reference_slide_transformer
    b, y, w, c = x.shape
    d = c // attn.heads
    q, k, v = attn.qkv(x).view(b, y, w, attn.heads, 3, d).permute(4, 0, 3, 1, 2, 5)
    k2 = attn.kernel_size ** 2
    # The operator's W (d, n, m) as the learned conv's weight: output channel c*k2 + n reads slot m.
    learned = attn.shift_weight.reshape(d * k2, 1, attn.kernel_size, attn.kernel_size)
    learned_bias = (attn.identity_bias + attn.shift_bias).reshape(d * k2)
    out = reference_slide_transformer(q, k, v, attn.kernel_size, attn.dilation, attn.key_bias, learned, learned_bias)
    return attn.proj(out.permute(0, 2, 3, 1, 4).reshape(b, y, w, c))


def test_slide_attention_module_matches_the_reference_composite():
    torch.manual_seed(0)
    attn = snn.SlideAttention(24, 3).double()
    x = torch.randn(2, 6, 5, 24, dtype=torch.double)
    torch.testing.assert_close(attn(x), reference_slide_block(attn, x))


def test_multi_head_attention_module_matches_an_aten_composite():
    torch.manual_seed(0)
    attn = snn.MultiHeadAttention(24, 4, relative_position_size=3).double()
    x = torch.randn(2, 9, 24, dtype=torch.double)
    q, k, v = attn.qkv(x).view(2, 9, 3, 4, 6).permute(2, 0, 3, 1, 4)
    table = attn.relative_position_table
    bias = torch.stack([torch.stack([table[attn.relative_position_index[i, j]] for j in range(9)]) for i in range(9)])
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, bias.permute(2, 0, 1))
    torch.testing.assert_close(attn(x), attn.proj(expected.transpose(1, 2).reshape(2, 9, 24)))
    with pytest.raises(ValueError, match=r"the relative-position table is for 9 tokens \(a 3x3 map, resized for other "
                                         r"maps\), got 8 tokens, not a 3x3 map"):
        attn(torch.randn(2, 8, 24, dtype=torch.double))


def test_input_normalization_applies_the_config_statistics():
    model = snn.SlideTransformer(snn.fashion()).eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(snn.InputNormalization(model)(images), model((images - 0.2860) / 0.3530))


def test_model_descriptions_build_the_model_or_say_what_is_wrong():
    options = snn.fashion().to_options()
    model = slideformer.checkpoint.build_model({"family": "slide_transformer", "options": options})
    assert isinstance(model, snn.SlideTransformer) and model.config == snn.fashion()
    with pytest.raises(ValueError, match="unknown model family 'mvit2' \\(this package builds: slide_transformer, mvit\\)"):
        slideformer.checkpoint.build_model({"family": "mvit2", "options": options})
    with pytest.raises(ValueError, match=r"unknown: \['window'\], missing: \['border'\]"):
        bad = dict(options, window=7)
        del bad["border"]
        slideformer.checkpoint.build_model({"family": "slide_transformer", "options": bad}, "ck.pt")
    # Values: the library's validate() of the family, with the C++ reader's message.
    with pytest.raises(ValueError, match=r"^ck.pt: model option 'kernel_size' must be odd and in \[1, 31\], got 4$"):
        slideformer.checkpoint.build_model({"family": "slide_transformer", "options": dict(options, kernel_size=4)},
                                           "ck.pt")


def test_load_checkpoint_rejects_files_that_are_no_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=f"{path}: not a readable checkpoint"):
        slideformer.load_checkpoint(path)
