"""The program's side of published weights (docs/pretrained.md): `slideformer import`, `export
--format safetensors` and back, and `train --init` with a re-initialised head, --freeze-stages and
--lr-decay.

- import: timm's mvitv2_tiny (seeded, every parameter nudged) as safetensors -> checkpoint.pt ->
  TorchScript export: timm's logits within 1e-4 relative; the checkpoint carries the pretrained
  input configuration (size, mean, std, crop_pct, class names);
- safetensors: the checkpoint's tensors read by safetensors.torch.load_file are the checkpoint's
  own, and a file written by safetensors.torch imports back tensor for tensor;
- train --init: with an lr far too small to move anything, the run's weights are the file's (so
  the file was loaded, not merely accepted), the head excepted when the class count differs;
  frozen stages stay bit for bit; after one AdamW step the largest update of each bias is
  lr * decay^(L + 1 - depth) (Adam's first step moves each entry by lr * g / (|g| + eps)).
"""
import collections
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import fashion_test_images, nudged_timm_reference, program_result, run_program

QUICK = ["--limit", "64", "--batch-size", "32", "--threads", "1", "--epochs", "1"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def model_state(checkpoint):
    return {k: v for k, v in torch.jit.load(str(checkpoint)).model.state_dict().items()}


def error_of(*args):
    result = program_result(*args)
    assert result.returncode == 1, result.stdout
    return result.stderr.strip()


# --- import --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_import(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_import")
    state, images, expected = nudged_timm_reference("mvitv2_tiny")
    save_file({k: v.contiguous() for k, v in state.items()}, root / "model.safetensors", metadata={"format": "pt"})
    (root / "names.txt").write_text("".join(f"class {c}\n" for c in range(1000)))
    stdout = run_program("import", "--from", "timm", root / "model.safetensors", "--preset", "mvitv2_tiny",
                         "--out", root / "run", "--class-names", root / "names.txt")
    return root, stdout, images, expected


def test_imported_timm_weights_export_with_timms_logits(timm_import):
    root, stdout, images, expected = timm_import
    checkpoint = root / "run" / "checkpoint.pt"
    assert stdout == (f"imported {root / 'model.safetensors'} (timm weights) into mvitv2_tiny (mvit, 1000 classes): "
                      f"{checkpoint}\n")
    run_program("export", "--checkpoint", checkpoint, "--out", root / "model.pt")
    extra = {"data_config.json": ""}
    exported = torch.jit.load(str(root / "model.pt"), _extra_files=extra)
    # The export takes [0, 1] images and normalises them with the checkpoint's mean and std.
    unit = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = exported(unit)
    error = ((logits.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
    assert error < 1e-4
    config = json.loads(extra["data_config.json"])
    assert config["image_size"] == 224 and config["crop_pct"] == pytest.approx(0.9)
    assert config["mean"] == pytest.approx(IMAGENET_MEAN) and config["std"] == pytest.approx(IMAGENET_STD)
    assert config["class_names"][:2] == ["class 0", "class 1"] and len(config["class_names"]) == 1000


def test_an_imported_checkpoint_asks_for_data_to_evaluate(timm_import):
    root = timm_import[0]
    checkpoint = root / "run" / "checkpoint.pt"
    assert error_of("eval", "--checkpoint", checkpoint) == (
        f"slideformer: error: {checkpoint}: imported weights come with no data: give --data (a folder of "
        "<class>/<image>)")


def test_import_refusals_name_the_problem(timm_import, tmp_path):
    root = timm_import[0]
    weights = root / "model.safetensors"
    assert error_of("import", "--from", "timm", weights, "--preset", "slide_swin_tiny", "--out", tmp_path) == (
        "slideformer: error: --preset slide_swin_tiny: --from timm imports into the mvitv2_* presets, not into a "
        "model of family 'slide_transformer'")
    assert error_of("import", "--from", "timm", weights, "--preset", "mvitv2_tiny", "--out", root / "run") == (
        f"slideformer: error: {root / 'run' / 'checkpoint.pt'}: a checkpoint is already there (import into another "
        "--out)")
    assert error_of("import", "--from", "slideformer", weights, "--out", tmp_path) == (
        f"slideformer: error: {weights}: its metadata has no model_config (not written by `slideformer export`): "
        "give --preset")
    assert error_of("import", "--from", "slide-transformer", weights, "--preset", "slide_swin_tiny",
                    "--out", tmp_path).startswith(f"slideformer: error: {weights}: not slide-transformer weights: ")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert error_of("import", "--from", "timm", weights, "--preset", "mvitv2_tiny", "--out", tmp_path / "x",
                    "--class-names", names) == (
        f"slideformer: error: --class-names {names}: 2 names, the model has 1000 classes")
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "x" / "checkpoint.pt").exists()


# --- safetensors out and in ----------------------------------------------------------------------

def test_safetensors_export_holds_the_checkpoints_tensors_and_imports_back(fashion_checkpoint, tmp_path):
    out = tmp_path / "fashion.safetensors"
    stdout = run_program("export", "--checkpoint", fashion_checkpoint, "--out", out, "--format", "safetensors")
    assert re.fullmatch(rf"exported {re.escape(str(fashion_checkpoint))} \(fashion\) to {re.escape(str(out))}: "
                        r"\d+ tensors under the model's names \(safetensors\)\n", stdout)
    expected = model_state(fashion_checkpoint)
    exported = load_file(out)
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["model_config"])["options"]["num_classes"] == 10
    assert "data_config" not in metadata  # trained on Fashion-MNIST's IDX files (a folder model has one)

    # Written by safetensors.torch (other values, same names and metadata), imported back.
    changed = {name: (t + 0.25 if t.is_floating_point() else t) for name, t in exported.items()}
    save_file(changed, tmp_path / "changed.safetensors", metadata=metadata)
    run_program("import", "--from", "slideformer", tmp_path / "changed.safetensors", "--out", tmp_path / "back")
    back = model_state(tmp_path / "back" / "checkpoint.pt")
    assert back.keys() == changed.keys()
    for name, tensor in changed.items():
        assert torch.equal(back[name], tensor), name
    # The model and data configs came with the file: evaluation runs as on the original.
    assert "model fashion: test accuracy" in run_program("eval", "--checkpoint", tmp_path / "back" / "checkpoint.pt",
                                                         "--limit", "20")


# --- train --init --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """Image folders of five Fashion-MNIST classes (train: 16 images each, val: 8), gray PNGs."""
    import gzip
    root = tmp_path_factory.mktemp("five_classes")
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    pictures = (fashion_test_images(len(labels))[:, 0] * 255).round().byte().numpy()
    for label in range(5):
        images = pictures[labels == label]
        for split, start, count in [("train", 0, 16), ("val", 16, 8)]:
            (root / split / f"c{label}").mkdir(parents=True)
            for i in range(start, start + count):
                Image.fromarray(images[i]).save(root / split / f"c{label}" / f"{i}.png")
    return root


def test_init_loads_the_weights_and_reinitialises_a_head_of_another_class_count(fashion_checkpoint, five_classes,
                                                                               tmp_path):
    stdout = run_program("train", "--preset", "fashion", *QUICK, "--data", five_classes, "--crop-pct", "1",
                         "--init", fashion_checkpoint, "--lr", "1e-30", "--out", tmp_path)
    assert (f"--init {fashion_checkpoint}: slideformer weights loaded; head re-initialised (10 classes in the file, "
            "5 here)\n") in stdout
    initial, trained = model_state(fashion_checkpoint), model_state(tmp_path / "checkpoint.pt")
    assert trained["head.weight"].shape == (5, initial["head.weight"].shape[1])
    for name, tensor in trained.items():
        if not name.startswith("head."):
            assert torch.allclose(tensor, initial[name], rtol=0, atol=1e-6), name


def test_init_from_the_same_class_count_loads_every_tensor(fashion_checkpoint, tmp_path):
    stdout = run_program("train", "--preset", "fashion", *QUICK, "--init", fashion_checkpoint, "--lr", "1e-30",
                         "--out", tmp_path)
    assert f"--init {fashion_checkpoint}: slideformer weights loaded\n" in stdout
    initial, trained = model_state(fashion_checkpoint), model_state(tmp_path / "checkpoint.pt")
    for name, tensor in trained.items():
        assert torch.allclose(tensor, initial[name], rtol=0, atol=1e-6), name


def test_init_that_does_not_fit_stops_with_the_mismatches(fashion_checkpoint, tmp_path):
    state = model_state(fashion_checkpoint)
    bad = collections.OrderedDict((k, v.contiguous()) for k, v in state.items())
    del bad["norm.weight"]
    bad["stages.0.0.mlp.fc1.bias"] = bad["stages.0.0.mlp.fc1.bias"][:10].contiguous()
    save_file(bad, tmp_path / "bad.safetensors")
    assert error_of("train", "--preset", "fashion", *QUICK, "--init", tmp_path / "bad.safetensors",
                    "--out", tmp_path / "run") == (
        f"slideformer: error: {tmp_path / 'bad.safetensors'}: weights do not fit the model: missing 'norm.weight'; "
        "'stages.0.0.mlp.fc1.bias' has shape [10], the model's is [96]")
    assert error_of("train", "--preset", "fashion_mvit", *QUICK, "--init", fashion_checkpoint,
                    "--out", tmp_path / "run").startswith(
        f"slideformer: error: {fashion_checkpoint}: weights do not fit the model: missing ")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_frozen_stages_do_not_move(fashion_checkpoint, tmp_path):
    run_program("train", "--preset", "fashion", *QUICK, "--init", fashion_checkpoint, "--freeze-stages", "1",
                "--out", tmp_path)
    initial, trained = model_state(fashion_checkpoint), model_state(tmp_path / "checkpoint.pt")
    frozen = [n for n in trained if n.startswith(("patch_embed.", "absolute_position", "stages.0.", "mergings.0."))]
    moving = [n for n in trained if n.startswith(("stages.1.", "norm.", "head."))]
    assert frozen and moving
    for name in frozen:
        assert torch.equal(trained[name], initial[name]), name
    assert all(not torch.equal(trained[n], initial[n]) for n in moving if n.endswith(".weight"))
    assert error_of("train", "--preset", "fashion", *QUICK, "--freeze-stages", "2", "--out", tmp_path / "r") == (
        "slideformer: error: --freeze-stages 2: the model has 2 stages, so it must be in [0, 1] (the last stage and "
        "the head always train)")


def test_layer_wise_lr_decay_scales_each_depth(fashion_checkpoint, tmp_path):
    """fashion: patch_embed 0, blocks 1..4 (stages [2, 2]), merging 3 (the block after it), norm and
    head 5; one step of lr 1e-3: the largest update of a bias is 1e-3 * 0.5^(5 - depth)."""
    lr, decay = 1e-3, 0.5
    run_program("train", "--preset", "fashion", "--limit", "32", "--batch-size", "32", "--threads", "1",
                "--epochs", "1", "--init", fashion_checkpoint, "--lr", str(lr), "--lr-decay", str(decay),
                "--out", tmp_path)
    initial, trained = model_state(fashion_checkpoint), model_state(tmp_path / "checkpoint.pt")
    depths = {"patch_embed.proj.bias": 0, "patch_embed.stem.0.bias": 0, "stages.0.0.norm1.bias": 1, "stages.0.1.mlp.fc2.bias": 2,
              "mergings.0.norm.bias": 3, "stages.1.0.norm2.bias": 3, "stages.1.1.mlp.fc1.bias": 4,
              "norm.bias": 5, "head.bias": 5}
    for name, depth in depths.items():
        step = (trained[name] - initial[name]).abs().max().item()
        assert step == pytest.approx(lr * decay ** (5 - depth), rel=1e-3), name



# --- export --features ---------------------------------------------------------------------------

def test_features_export_returns_the_stage_outputs(fashion_checkpoint, tmp_path):
    """The backbone export's stage outputs against the Python modules' walk, written out here."""
    import slideformer
    out = tmp_path / "backbone.pt"
    stdout = run_program("export", "--checkpoint", fashion_checkpoint, "--out", out, "--features")
    assert stdout.endswith("output the stage outputs (N, C_i, H_i, W_i)\n")
    unit = fashion_test_images(3)
    with torch.no_grad():
        features = torch.jit.load(str(out))(unit)
        model = slideformer.load_checkpoint(fashion_checkpoint)
        config = model.config
        x = model.patch_embed((unit - config.input_mean[0]) / config.input_std[0])
        if model.absolute_position is not None:
            x = x + model.absolute_position.weight
        expected = []
        for s, stage in enumerate(model.stages):
            for block in stage:
                x = block(x)
            expected.append(x.permute(0, 3, 1, 2))
            if s < len(model.mergings):
                x = model.mergings[s](x)
    assert [tuple(f.shape) for f in features] == [(3, 48, 14, 14), (3, 96, 7, 7)]
    for actual, reference in zip(features, expected):
        assert torch.allclose(actual, reference, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        python_features = model.eval().forward_features((unit - config.input_mean[0]) / config.input_std[0])
        assert all(torch.equal(a, b) for a, b in zip(python_features, expected))
        # At another size the export resizes the absolute table as the Python modules do.
        larger = torch.nn.functional.interpolate(unit, size=(36, 44), mode="bilinear")
        features = torch.jit.load(str(out))(larger)
        expected = model.forward_features((larger - config.input_mean[0]) / config.input_std[0])
    assert [tuple(f.shape) for f in features] == [(3, 48, 18, 22), (3, 96, 9, 11)]
    for actual, reference in zip(features, expected):
        assert torch.allclose(actual, reference, rtol=1e-4, atol=1e-5)
    assert error_of("export", "--checkpoint", fashion_checkpoint, "--out", tmp_path / "x.onnx", "--format", "onnx",
                    "--features") == (
        "slideformer: error: --features: only the torchscript format exports the stage outputs, not onnx")
