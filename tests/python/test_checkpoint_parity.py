"""A checkpoint of the C++ program loads into the Python modules: the same parameter and buffer
names, shapes and order, and the same logits (1e-5); and checkpoints of format v1 (a preset name,
no model description) load as the architecture their preset had then."""
import subprocess

import pytest
import torch

import slideformer
from conftest import LIBRARY, fashion_test_images, read_logits, run_program

TOOL = LIBRARY.parent.parent / "bin" / "model_parity"

IMAGES = 300


def test_python_modules_have_the_cpp_parameter_names_shapes_and_order(fashion_checkpoint):
    cpp = torch.jit.load(str(fashion_checkpoint)).model
    python = slideformer.load_checkpoint(fashion_checkpoint)
    assert [(n, p.shape) for n, p in python.named_parameters()] == [(n, p.shape) for n, p in cpp.named_parameters()]
    assert [(n, b.shape) for n, b in python.named_buffers()] == [(n, b.shape) for n, b in cpp.named_buffers()]
    frozen = [n for n, p in python.named_parameters() if not p.requires_grad]
    assert frozen == [f"stages.0.{i}.attn.identity_weight" for i in range(2)]


def test_a_cpp_checkpoint_gives_the_same_logits_in_python(fashion_checkpoint, tmp_path):
    run_program("eval", "--checkpoint", fashion_checkpoint, "--limit", IMAGES, "--logits", tmp_path / "cpp.f32")
    model = slideformer.nn.InputNormalization(slideformer.load_checkpoint(fashion_checkpoint))
    with torch.no_grad():
        python_logits = model(fashion_test_images(IMAGES))
    torch.testing.assert_close(python_logits, read_logits(tmp_path / "cpp.f32"), rtol=1e-5, atol=1e-5)


# The architectures of v1 checkpoints, newest first: how the presets were while v1 was written
# (written out here, independently of the library's list).
FASHION_V1 = dict(image_size=28, in_channels=1, num_classes=10, patch_size=2, stem_channels=24,
                  overlapping_patches=True, embed_dim=48, absolute_position_embedding=True,
                  sinusoidal_position_encoding=False, depths=[2, 2], heads=[3, 6], stage_kinds=["slide", "global"],
                  kernel_size=3, dilation=1, border="zeros", mlp_ratio=2.0, drop_path_rate=0.05,
                  input_mean=[0.2860], input_std=[0.3530])
V1_VERSIONS = [
    ("fashion", 0, FASHION_V1),
    ("fashion", 1, dict(FASHION_V1, absolute_position_embedding=False)),
    ("fashion", 2, dict(FASHION_V1, absolute_position_embedding=False, stem_channels=0, overlapping_patches=False)),
    ("slide_swin_tiny", 0, slideformer.nn.SlideTransformerConfig().to_options()),
]


PREVIOUS_NAMES = {"absolute_position": "absolute_position.weight"}


@pytest.mark.parametrize("preset,version,options", V1_VERSIONS)
def test_v1_checkpoints_load_as_their_preset_was_then(tmp_path, preset, version, options):
    path = tmp_path / "v1.pt"
    subprocess.run([str(TOOL), preset, "--v1-checkpoint", str(version), str(path)], check=True, timeout=600)
    model = slideformer.load_checkpoint(path)
    assert model.config.to_options() == options
    saved = torch.jit.load(str(path)).model.state_dict()
    # Written as the previous release did: SlideTransformer's table was the model's own tensor.
    saved = {PREVIOUS_NAMES.get(name, name): tensor for name, tensor in saved.items()}
    assert ("absolute_position.weight" in saved) == options["absolute_position_embedding"]
    assert saved.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
