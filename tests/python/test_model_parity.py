"""MViTv2 against timm 1.0.31, the TorchScript exports of every preset family run from Python, and
the Python modules (slideformer.nn) against the C++ ones for every preset of every family.

tests/tools/model_parity.cpp builds a preset in C++, optionally loads weights saved here under this
library's names, and writes its logits and its export. timm's mvitv2_* models (random
initialisation, fixed seed, every parameter perturbed so that none is at a neutral value) are
converted to those names: the C++ logits must match timm's, and the export's the C++ model's.
With --gradients it writes its state, its logits in eval and train mode in float32 and float64,
and every parameter's float64 gradient, which the Python model given that state must reproduce."""
import subprocess

import pytest
import timm
import torch
import torch.jit._pickle  # restore_type_tag: the typed dicts the tool writes

import slideformer.weights as weight_files
from slideformer import nn as snn
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


def cpp_gradients(tmp_path, preset, images, cotangent, seed):
    """The C++ preset's state (seed 0); its eval and train-mode logits in float32; the same and
    every parameter's gradient in float64 (tests/tools/model_parity.cpp)."""
    torch.save({"images": images, "cotangent": cotangent, "seed": seed}, tmp_path / "inputs.pt")
    result = subprocess.run([str(TOOL), preset, "--gradients", str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    with torch.serialization.safe_globals([torch.jit._pickle.restore_type_tag]):  # the dicts' types
        return torch.load(tmp_path / "out.pt")


def python_gradients(model, images, cotangent, seed):
    """The same for a Python model, in its dtype: eval and train-mode logits, and the gradients."""
    with torch.no_grad():
        eval_logits = model.eval()(images)
    model.train()
    torch.manual_seed(seed)
    train_logits = model(images)
    (train_logits * cotangent).sum().backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {"eval": eval_logits, "train": train_logits.detach(), "gradients": gradients}


def relative_error(actual, expected, scale):
    """|actual - expected| / (|expected| + scale) in the Frobenius norm: per element maxima do not
    suit the large presets, and `scale` keeps gradients that are zero in exact arithmetic (the
    key norms' biases, which shift every logit of a query alike) from dividing by rounding noise."""
    return ((actual.double() - expected).norm() / (expected.norm() + scale)).item()


# The size of the batch: the 224 x 224 presets run one image (the runtime of the float64 runs).
def batch_size(config):
    return 2 if config.image_size <= 64 else 1


@pytest.mark.parametrize("preset", snn.preset_names())
def test_python_modules_match_the_cpp_ones_forward_and_backward(tmp_path, preset):
    """Every preset of both families, built in C++ (seed 0), its state loaded into the Python module:
    the same parameter and buffer names in the same order; the same float32 logits in eval and in
    train mode (the same paths dropped for the same seed) within 1e-5; and in float64 the same
    logits and the same gradient of every parameter within 1e-9 (measured: below 1e-12)."""
    config = snn.preset(preset)
    torch.manual_seed(2)
    images = torch.randn(batch_size(config), config.in_channels, config.image_size, config.image_size)
    cotangent = torch.randn(images.shape[0], config.num_classes)
    cpp = cpp_gradients(tmp_path, preset, images, cotangent, seed=5)
    model = snn.build(config)
    assert [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()] == \
        list(cpp["state"])
    model.load_state_dict(cpp["state"])
    python32 = {}
    with torch.no_grad():
        python32["eval"] = model.eval()(images)
        torch.manual_seed(5)
        python32["train"] = model.train()(images)
    python64 = python_gradients(model.double(), images.double(), cotangent.double(), 5)
    for mode in ("eval", "train"):
        assert relative_error(cpp["float32"][mode], python32[mode], 0) < 1e-5, mode
        assert relative_error(cpp["float64"][mode], python64[mode], 0) < 1e-9, mode
    # Train mode drops paths (and scales the kept ones): the logits differ from eval mode's.
    assert (python64["train"] - python64["eval"]).abs().max() > 1e-3
    gradients = cpp["float64"]["gradients"]
    assert sorted(gradients) == sorted(python64["gradients"]) and len(gradients) > 0
    scale = 1e-6 * torch.stack([g.norm() for g in python64["gradients"].values()]).norm().item()
    for name, expected in python64["gradients"].items():
        assert relative_error(gradients[name], expected, scale) < 1e-9, name
