"""MViTv2 against timm 1.0.31, and the TorchScript exports of every preset family run from Python.

tests/tools/model_parity.cpp builds a preset in C++, optionally loads weights saved here under this
library's names, and writes its logits and its export. timm's mvitv2_* models (random
initialisation, fixed seed, every parameter perturbed so that none is at a neutral value) are
converted to those names: the C++ logits must match timm's, and the export's the C++ model's."""
import subprocess

import pytest
import timm
import torch

import slideformer.weights as weight_files
from conftest import LIBRARY, nudged_timm_reference

TOOL = LIBRARY.parent.parent / "bin" / "model_parity"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def from_timm(tmp_path, state, preset="mvitv2_tiny"):
    """timm's MultiScaleVit state_dict under the names of slideformer::nn::MViT: the library's timm
    table (slideformer.weights.map_weights) onto the names and shapes of the C++ preset."""
    subprocess.run([str(TOOL), preset, "--state", str(tmp_path / "model.safetensors")], check=True)
    return {name: tensor.contiguous() for name, tensor in
            weight_files.map_weights("timm", state, weight_files.read(tmp_path / "model.safetensors")).items()}


def run_tool(tmp_path, preset, weights, images):
    """The C++ model's logits for `images` and its export, loaded here."""
    weights_path = "-"
    if weights is not None:
        weights_path = tmp_path / "weights.pt"
        torch.save(weights, weights_path)
    torch.save(images, tmp_path / "images.pt")
    result = subprocess.run([str(TOOL), preset, str(weights_path), str(tmp_path / "images.pt"),
                             str(tmp_path / "logits.pt"), str(tmp_path / "export.pt")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return torch.load(tmp_path / "logits.pt"), torch.jit.load(str(tmp_path / "export.pt"))


@pytest.mark.parametrize("name,count", [("mvitv2_tiny", 24_173_320), ("mvitv2_small", 34_870_216),
                                        ("mvitv2_base", 51_472_744)])
def test_timm_has_the_parameter_counts_of_the_presets(name, count):
    # The C++ presets are checked against the same figures (tests/cpp/test_mvit.cpp).
    assert sum(p.numel() for p in timm.create_model(name).parameters()) == count


def test_mvitv2_tiny_logits_match_timm_and_the_export_matches_the_model(tmp_path):
    state, images, expected = nudged_timm_reference("mvitv2_tiny")
    logits, exported = run_tool(tmp_path, "mvitv2_tiny", from_timm(tmp_path, state), images)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        scripted = exported(images * IMAGENET_STD + IMAGENET_MEAN)  # the export takes [0, 1] images
    torch.testing.assert_close(scripted, logits, rtol=1e-5, atol=1e-5)


def test_the_tool_refuses_weights_that_do_not_fit(tmp_path):
    weights = from_timm(tmp_path, timm.create_model("mvitv2_tiny").state_dict())
    weights["head.weight"] = weights["head.weight"][:10]
    result = subprocess.run([str(TOOL), "mvitv2_tiny", "-", "x", "y", "z"], capture_output=True, text=True)
    assert result.returncode == 1 and "x: cannot open" in result.stderr
    torch.save(weights, tmp_path / "weights.pt")
    result = subprocess.run([str(TOOL), "mvitv2_tiny", str(tmp_path / "weights.pt"), "x", "y", "z"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "head.weight: shape [10, 768], the model has [1000, 768]" in result.stderr


@pytest.mark.parametrize("preset,channels,size", [("slide_swin_tiny", 3, 224), ("fashion", 1, 28),
                                                  ("fashion_mvit", 1, 28)])
def test_exports_of_every_family_match_the_cpp_model(tmp_path, preset, channels, size):
    torch.manual_seed(1)
    images = torch.rand(2, channels, size, size)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (torch.tensor(0.2860), torch.tensor(0.3530))
    logits, exported = run_tool(tmp_path, preset, None, (images - mean) / std)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), logits, rtol=1e-5, atol=1e-5)
