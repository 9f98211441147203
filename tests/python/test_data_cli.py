"""The program on image folders: train --train-dir/--val-dir and --data DIR, eval with top-5 and
class names, export with the data config inside, predict on image files from C++ and from Python
(slideformer.images) with the same probabilities, and bad images stopping or skipped."""
import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fashion_test_images, program_result, run_program

import slideformer.images as images

CLASSES = ["bag", "sneaker", "trouser"]  # Fashion-MNIST classes 8, 7, 1
FASHION_LABELS = {"bag": 8, "sneaker": 7, "trouser": 1}
PHOTO_DIR = pathlib.Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
QUICK = ["--preset", "fashion", "--batch-size", "32", "--threads", "1", "--epochs", "1"]


def fashion_pictures():
    """Fashion-MNIST test images of three classes, as uint8 (28, 28) arrays by class name."""
    import gzip
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    pictures = (fashion_test_images(len(labels))[:, 0] * 255).round().byte().numpy()
    return {name: pictures[labels == label] for name, label in FASHION_LABELS.items()}


def write_folder(root, pictures, start, count):
    """root/<class>/<n>.{jpg,png}: JPEG and PNG alternating, every third one RGB, some resized."""
    for name, images_of_class in pictures.items():
        (root / name).mkdir(parents=True)
        for i in range(start, start + count):
            image = Image.fromarray(images_of_class[i])
            if i % 3 == 0:
                image = Image.merge("RGB", [image, image, image.point(lambda v: v * 3 // 4)])
            if i % 5 == 0:
                image = image.resize((33, 31))
            image.save(root / name / (f"{i:04d}.jpg" if i % 2 else f"{i:04d}.png"), quality=95)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion_folders")
    pictures = fashion_pictures()
    write_folder(root / "train", pictures, 0, 60)
    write_folder(root / "val", pictures, 60, 20)
    return root


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_run")
    stdout = run_program("train", *QUICK, "--data", folders, "--out", out)
    return out, stdout


def test_training_on_folders_takes_classes_and_channels_from_the_data(trained):
    out, stdout = trained
    assert "on 180 images" in stdout
    report = run_program("summary", "--checkpoint", out / "checkpoint.pt")
    assert "3x28x28 images, 3 classes" in report  # RGB images among them: 3 channels
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["test_accuracy"] > 0.5  # three easy classes after one short epoch


def test_eval_prints_accuracy_top5_and_a_confusion_matrix_with_class_names(trained, folders):
    out, _ = trained
    report = run_program("eval", "--checkpoint", out / "checkpoint.pt")
    assert f"(60 images in {folders}/val)" in report and "top-3" in report
    lines = report.splitlines()
    header = lines.index("confusion matrix (rows: true class, columns: predicted)")
    assert lines[header + 1].split() == CLASSES
    rows = [line.split() for line in lines[header + 2:header + 5]]
    assert [row[0] for row in rows] == CLASSES and sum(int(v) for row in rows for v in row[1:]) == 60
    # --data names another folder of the same classes (or the root above its val/).
    assert "(60 images in" in run_program("eval", "--checkpoint", out / "checkpoint.pt", "--data", folders / "val")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out, _ = trained
    model = tmp_path_factory.mktemp("export") / "model.pt"
    run_program("export", "--checkpoint", out / "checkpoint.pt", "--out", model)
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four photographs of scikit-image, PNG and JPEG, in one directory."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ["chelsea.png", "rocket.jpg", "camera.png"]:
        shutil.copy(PHOTO_DIR / name, folder / name)
    Image.open(PHOTO_DIR / "coffee.png").save(folder / "coffee.jpg", quality=90)
    return folder


def predicted_by_cpp_and_python(model_file, photos):
    """The C++ program's and slideformer.images' top-3 of each photo, after asserting that they
    name the same classes with the same probabilities (1e-5)."""
    cpp = [json.loads(line) for line in run_program("predict", "--model", model_file, "--json", photos).splitlines()]
    assert [pathlib.Path(r["file"]).name for r in cpp] == ["camera.png", "chelsea.png", "coffee.jpg", "rocket.jpg"]
    model, config = images.load_model(model_file)
    assert config["class_names"] == CLASSES and config["image_size"] == 28
    python = images.predict(model, config, [r["file"] for r in cpp])
    for ours, (file, top) in zip(cpp, python):
        assert [c["class"] for c in ours["top"]] == [name for name, _ in top]
        for c, (_, p) in zip(ours["top"], top):
            assert abs(c["probability"] - p) < 1e-5, (file, c, p)
    return cpp


def test_predict_from_cpp_and_python_gives_the_same_top_classes(exported, photos):
    predicted_by_cpp_and_python(exported, photos)
    text = run_program("predict", "--model", exported, "--top", "2", photos / "rocket.jpg").strip()
    assert text.startswith(f"{photos / 'rocket.jpg'}: ") and text.count(",") == 1


def test_aoti_and_onnx_exports_carry_the_data_config(trained, exported, photos, tmp_path):
    """The class names and transform travel in an AOTInductor package's metadata (predict works on
    it as on the TorchScript model, with the same probabilities) and in an ONNX file's metadata."""
    out, _ = trained
    package = tmp_path / "model.pt2"
    run_program("export", "--checkpoint", out / "checkpoint.pt", "--out", package, "--format", "aoti")
    from_package = predicted_by_cpp_and_python(package, photos)
    for ours, theirs in zip(from_package, predicted_by_cpp_and_python(exported, photos)):
        for a, b in zip(ours["top"], theirs["top"]):
            assert a["class"] == b["class"] and abs(a["probability"] - b["probability"]) < 1e-5
    onnx_file = tmp_path / "model.onnx"
    run_program("export", "--checkpoint", out / "checkpoint.pt", "--out", onnx_file, "--format", "onnx")
    import onnxruntime
    stored = onnxruntime.InferenceSession(str(onnx_file)).get_modelmeta().custom_metadata_map
    assert json.loads(stored[images.DATA_CONFIG_FILE]) == images.load_model(exported)[1]


def test_predict_reports_a_bad_file_and_predicts_the_others(exported, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    shutil.copy(PHOTO_DIR / "rocket.jpg", tmp_path / "b.jpg")
    result = program_result("predict", "--model", exported, tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path / 'a.jpg'}: not a JPEG or PNG image" in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'b.jpg'}: ")


def test_bad_images_stop_training_or_are_counted_with_skip_bad_images(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders, data)
    (data / "train" / "bag" / "empty.jpg").write_bytes(b"")
    result = program_result("train", *QUICK, "--data", data, "--out", tmp_path / "a")
    assert result.returncode == 1
    assert f"{data / 'train' / 'bag' / 'empty.jpg'}: empty file (0 bytes)" in result.stderr
    stdout = run_program("train", *QUICK, "--data", data, "--out", tmp_path / "b", "--skip-bad-images")
    assert "1 bad images skipped (0 in validation)" in stdout
    metrics = json.loads((tmp_path / "b" / "metrics.jsonl").read_text())
    assert metrics["skipped_images"] == 1


def test_missing_folders_are_named(folders, tmp_path):
    result = program_result("train", *QUICK, "--train-dir", folders / "train", "--val-dir", tmp_path / "nowhere",
                            "--out", tmp_path / "a")
    assert result.returncode == 1
    assert f"{tmp_path / 'nowhere'}: no such directory" in result.stderr
    result = program_result("train", *QUICK, "--train-dir", folders / "train", "--out", tmp_path / "b")
    assert "--val-dir is needed too" in result.stderr


def test_a_resumed_folder_run_ends_as_an_uninterrupted_one(folders, tmp_path):
    recipe = [*QUICK[:-2], "--epochs", "2", "--augment", "--data", folders]
    run_program("train", *recipe, "--out", tmp_path / "whole")
    run_program("train", *recipe, "--out", tmp_path / "parts", "--stop-after", "1")
    run_program("train", *recipe, "--out", tmp_path / "parts", "--resume")
    whole = torch.jit.load(str(tmp_path / "whole" / "checkpoint.pt")).model.state_dict()
    parts = torch.jit.load(str(tmp_path / "parts" / "checkpoint.pt")).model.state_dict()
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
