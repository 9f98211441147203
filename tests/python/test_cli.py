"""The slideformer program: summary, train/resume, eval, export, predict and its error handling."""
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from conftest import PROGRAM as BIN
from conftest import program_result as run
from conftest import run_program as checked

DATA = "/usr/share/datasets/fashion-mnist"
QUICK = ["--preset", "fashion", "--limit", "256", "--batch-size", "64", "--threads", "1"]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_tensors(path):
    """Every tensor of a checkpoint (model and optimizer state), by name."""
    archive = torch.jit.load(str(path))
    tensors = {f"model.{k}": v for k, v in archive.model.state_dict().items()}
    tensors.update({f"optimizer.{k}": v for k, v in archive.optimizer.state_dict().items()})
    return tensors


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    checked("train", *QUICK, "--epochs", "1", "--out", out)
    return out


@pytest.fixture(scope="module")
def trained_mvit(tmp_path_factory):
    """The pooling-attention preset, trained like `fashion` (family "mvit" in the checkpoint)."""
    out = tmp_path_factory.mktemp("run_mvit")
    checked("train", *QUICK[2:], "--preset", "fashion_mvit", "--epochs", "1", "--out", out)
    return out


@pytest.mark.parametrize("preset,total,trainable,first_block", [
    ("slide_swin_tiny", 28348834, 28338466, "block_0_0 (TransformerBlock) [1, 56, 56, 96]"),
    ("slide_swin_small", 49747378, 49737010, "block_0_0 (TransformerBlock) [1, 56, 56, 96]"),
    ("slide_swin_base", 87948704, 87938336, "block_0_0 (TransformerBlock) [1, 56, 56, 128]"),
    # timm 1.0.31's mvitv2_* (tests/python/test_model_parity.py)
    ("mvitv2_tiny", 24173320, 24173320, "block_0_0 (MViTBlock)      [1, 56, 56, 96]"),
    ("mvitv2_small", 34870216, 34870216, "block_0_0 (MViTBlock)      [1, 56, 56, 96]"),
    ("mvitv2_base", 51472744, 51472744, "block_0_0 (MViTBlock)      [1, 56, 56, 96]"),
    # torchvision 0.26's video mvit_v1_b / mvit_v2_s (tests/python/test_video_mvit.py): class token + 8x56x56
    ("mvit_v1_b", 36610672, 36610672, "block_0 (MViTBlock)        [1, 25089, 192]"),
    ("mvit_v2_s", 34537744, 34537744, "block_0 (MViTBlock)        [1, 25089, 96]"),
])
def test_summary_prints_reference_parameter_counts(preset, total, trainable, first_block):
    lines = checked("summary", "--preset", preset).splitlines()
    assert f"total_params {total}" in lines
    assert f"trainable_params {trainable}" in lines
    assert any(" ".join(line.split()).startswith(" ".join(first_block.split())) for line in lines), lines


def test_training_writes_checkpoint_metrics_and_plot(trained):
    assert (trained / "checkpoint.pt").exists()
    metrics = (trained / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and '"test_accuracy"' in metrics[0] and '"images_per_second"' in metrics[0]
    assert (trained / "curves.png").stat().st_size > 0


def plotted_curves(run_dir, tmp_path):
    """The curves the run's own gnuplot program draws, as gnuplot tabulates them: {title: [(x, y)]}."""
    copy = tmp_path / "replot"
    copy.mkdir()
    for name in ("curves.gp", "curves.dat"):
        shutil.copy(run_dir / name, copy)
    result = subprocess.run(["gnuplot", "-e", "set table 'table.txt'", "curves.gp"], cwd=copy,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    curves, title = {}, None
    for line in (copy / "table.txt").read_text().splitlines():
        if line.startswith("# Curve title:"):
            title = line.split('"')[1]
            curves[title] = []
        elif line.strip() and not line.startswith("#"):
            x, y = line.split()[:2]
            curves[title].append((float(x), float(y)))
    return curves


def test_plot_draws_both_panels_in_an_out_dir_with_spaces_quotes_and_dollars(tmp_path):
    """The program once passed its gnuplot code through a shell: "$3" vanished (no accuracy panel)
    and a quote in --out broke the command."""
    out = tmp_path / "run 'one' \"two\" $HOME $(touch pwned) `x`; y"
    result = run("train", *QUICK, "--epochs", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no gnuplot warning
    assert not (tmp_path / "pwned").exists() and not pathlib.Path("pwned").exists()
    assert (out / "curves.png").stat().st_size > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curves = plotted_curves(out, tmp_path)
    # gnuplot tabulates 6 significant digits.
    assert curves["train loss"] == [(m["epoch"], pytest.approx(m["train_loss"], rel=1e-5)) for m in metrics]
    assert curves["test accuracy (%)"] == [(m["epoch"], pytest.approx(100 * m["test_accuracy"], rel=1e-5))
                                           for m in metrics]
    # The rest of the program takes the same directory.
    exported = out / "model $x 'q'.pt"
    checked("eval", "--checkpoint", out / "checkpoint.pt", "--limit", "64")
    checked("export", "--checkpoint", out / "checkpoint.pt", "--out", exported)
    assert "test accuracy" in checked("predict", "--model", exported, "--limit", "64")


def test_resume_continues_bit_for_bit(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # Not the defaults: a resume that forgot the run's recipe would drift from the straight run.
    recipe = ["--augment", "--label-smoothing", "0.05", "--weight-decay", "0.01", "--lr", "1e-3"]
    checked("train", *QUICK, *recipe, "--epochs", "2", "--out", straight)
    checked("train", *QUICK, *recipe, "--epochs", "2", "--stop-after", "1", "--out", split)
    halfway = checkpoint_tensors(split / "checkpoint.pt")
    assert not torch.equal(halfway["model.head.weight"],
                           checkpoint_tensors(straight / "checkpoint.pt")["model.head.weight"])
    checked("train", *QUICK, "--resume", "--out", split)
    assert_same_tensors(checkpoint_tensors(split / "checkpoint.pt"),
                        checkpoint_tensors(straight / "checkpoint.pt"))


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    args = ["--preset", "fashion", "--limit", "1024", "--batch-size", "32", "--threads", "1", "--epochs", "2"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    checked("train", *args, "--out", straight)
    process = subprocess.Popen([str(BIN), "train", *args, "--out", str(interrupted)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()  # the header line: training has started
    assert process.stdout.readline().startswith("epoch 1/2  step")  # a few steps in
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output
    assert "interrupted: checkpoint saved" in output
    # Taken inside the first epoch, where the signal came.
    saved = torch.jit.load(str(interrupted / "checkpoint.pt"))
    assert saved.epoch == 0 and 0 < saved.step_in_epoch < 32 and saved.global_step == saved.step_in_epoch
    checked("train", *args, "--resume", "--out", interrupted)
    assert_same_tensors(checkpoint_tensors(interrupted / "checkpoint.pt"),
                        checkpoint_tensors(straight / "checkpoint.pt"))


def test_mvit_checkpoint_stores_its_family_and_summarises(trained_mvit):
    saved = torch.jit.load(str(trained_mvit / "checkpoint.pt"))
    description = json.loads(saved.model_config)
    assert description["family"] == "mvit" and description["options"]["position_encoding"] == "learned"
    lines = checked("summary", "--checkpoint", trained_mvit / "checkpoint.pt").splitlines()
    assert lines[0] == "model fashion_mvit (mvit, 1x28x28 images, 10 classes)"
    assert any(line.startswith("block_1_0 (MViTBlock)") and "[1, 7, 7, 64]" in line for line in lines), lines


@pytest.mark.parametrize("run_dir", ["trained", "trained_mvit"])
def test_exported_model_reproduces_module_logits_from_cpp_and_python(run_dir, request, tmp_path):
    trained = request.getfixturevalue(run_dir)
    module_logits, scripted_logits, eval_predictions, predict_predictions = (
        tmp_path / n for n in ("module.f32", "scripted.f32", "eval.txt", "predict.txt"))
    checked("eval", "--checkpoint", trained / "checkpoint.pt", "--limit", "300",
            "--logits", module_logits, "--predictions", eval_predictions)
    exported = tmp_path / "model.pt"
    checked("export", "--checkpoint", trained / "checkpoint.pt", "--out", exported)
    checked("predict", "--model", exported, "--limit", "300",
            "--logits", scripted_logits, "--predictions", predict_predictions)
    assert eval_predictions.read_text() == predict_predictions.read_text()

    def read_logits(path):
        return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(300, 10))

    module_logits = read_logits(module_logits)
    torch.testing.assert_close(read_logits(scripted_logits), module_logits, rtol=1e-5, atol=1e-5)
    with gzip.open(f"{DATA}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:300]
    model = torch.jit.load(str(exported))
    with torch.no_grad():
        python_logits = model(torch.from_numpy(images.copy()).float() / 255)
    torch.testing.assert_close(python_logits, module_logits, rtol=1e-5, atol=1e-5)


def test_checkpoint_weights_load_bit_exact_into_the_export(trained, tmp_path):
    exported = tmp_path / "model.pt"
    checked("export", "--checkpoint", trained / "checkpoint.pt", "--out", exported)
    saved = checkpoint_tensors(trained / "checkpoint.pt")
    scripted = torch.jit.load(str(exported)).state_dict()
    assert torch.equal(scripted["head_weight"], saved["model.head.weight"])
    assert torch.equal(scripted["block_1_0.attn.qkv_weight"], saved["model.stages.1.0.attn.qkv.weight"])


def write_idx(path, header, payload, compress=True):
    raw = bytes(header) + bytes(payload)
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def broken_data(tmp_path):
    """A copy of the test split whose images file the test then damages."""
    shutil.copy(f"{DATA}/t10k-labels-idx1-ubyte.gz", tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage,message", [
    ("truncated", "truncated: expected 7840000 data bytes, found 1000"),
    ("magic", "not an IDX file of 3-d unsigned bytes (bad magic number)"),
    ("gzip", "corrupt gzip data"),
    ("missing", "cannot open the file"),
])
def test_idx_reader_rejects_damaged_files(trained, broken_data, damage, message, tmp_path):
    images = broken_data / "t10k-images-idx3-ubyte.gz"
    header = [0, 0, 8, 3, 0, 0, 0x27, 0x10, 0, 0, 0, 28, 0, 0, 0, 28]  # 10000 x 28 x 28
    if damage == "truncated":
        write_idx(images, header, [0] * 1000)
    elif damage == "magic":
        write_idx(images, [0, 0, 9, 3] + header[4:], [0] * 7840000)
    elif damage == "gzip":
        images.write_bytes(gzip.compress(bytes(header) + bytes(7840000))[:5000] + b"garbage!" * 100)
    exported = tmp_path / "model.pt"
    checked("export", "--checkpoint", trained / "checkpoint.pt", "--out", exported)
    result = run("predict", "--model", exported, "--data", broken_data)
    assert result.returncode != 0
    assert f"slideformer: error: {images}: {message}" in result.stderr, result.stderr


def test_bad_inputs_fail_with_one_line_errors_and_keep_the_checkpoint(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    good = digest(checkpoint)

    unknown = run("train", "--preset", "swin_huge", "--out", run_dir)
    assert unknown.returncode != 0 and "swin_huge" in unknown.stderr
    wrong_preset = run("train", "--preset", "slide_swin_tiny", "--resume", "--out", run_dir)
    assert wrong_preset.returncode != 0
    assert (f"{checkpoint}: the checkpoint holds model 'fashion', not --preset slide_swin_tiny (a resumed run "
            "keeps its model: leave --preset out)") in wrong_preset.stderr
    missing_data = run("train", *QUICK, "--resume", "--out", run_dir, "--data", tmp_path / "nowhere")
    assert missing_data.returncode != 0
    assert f"{tmp_path / 'nowhere'}/train-images-idx3-ubyte.gz: cannot open the file" in missing_data.stderr
    assert digest(checkpoint) == good

    fresh_over_good = run("train", *QUICK, "--epochs", "1", "--out", run_dir)
    assert fresh_over_good.returncode != 0
    assert f"{checkpoint}: a checkpoint is already there" in fresh_over_good.stderr
    assert digest(checkpoint) == good

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    result = run("eval", "--checkpoint", truncated)
    assert result.returncode != 0
    assert f"{truncated}: not a readable checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    not_a_model = run("predict", "--model", truncated)
    assert not_a_model.returncode != 0 and f"{truncated}: not a loadable TorchScript model" in not_a_model.stderr


def test_bench_reports_throughput_flops_and_gemm_fraction():
    import json

    report = json.loads(checked("bench", "--preset", "fashion", "--batch-size", "4", "--threads",
                                "1", "--rounds", "1", "--json"))
    # The fashion preset by hand (2 FLOPs per multiply-add): stem 1->24->24 (3x3, 28x28),
    # overlapping patches 24->48 (3x3 stride 2, 14x14); two slide blocks at 14x14 (dim 48, MLP 96,
    # 3x3 window: QK^T and PV 2 x 9, shift mixing 2 x 81 per channel); merging 4*48->96 at 7x7;
    # two global blocks at 7x7 (dim 96, MLP 192); head 96->10.
    convolutions = 2 * 784 * 9 * (1 * 24 + 24 * 24) + 2 * 196 * 9 * 24 * 48
    stage1 = 2 * (2 * 196 * 48 * (3 * 48 + 48 + 2 * 96) + 2 * 196 * 48 * (2 * 9 + 2 * 81))
    merging = 2 * 49 * (4 * 48) * 96
    stage2 = 2 * (2 * 49 * 96 * (3 * 96 + 96 + 2 * 192) + 4 * 49 * 49 * 96)
    expected = convolutions + stage1 + merging + stage2 + 2 * 96 * 10
    assert report["flops_per_image"] == pytest.approx(expected, rel=1e-9)
    assert report["preset"] == "fashion" and report["batch_size"] == 4 and report["threads"] == 1
    for key in ("forward_img_s", "train_img_s", "mm_flop_s"):
        assert report[key] > 0, key
    rate = report["mm_flop_s"]
    assert report["forward_mm_fraction"] == pytest.approx(
        expected * report["forward_img_s"] / rate, rel=1e-3)
    assert report["train_mm_fraction"] == pytest.approx(
        3 * expected * report["train_img_s"] / rate, rel=1e-3)
    # The machine: the library's own line at the bench's thread count, and the GEMM libraries.
    assert report["cpu"].startswith(torch.ops.slideformer.cpu_info().rsplit(", ", 1)[0])
    assert report["cpu"].endswith(", 1 threads")
    assert report["linear_backends"].startswith("linear layers: forward ")


def test_gemm_setting_is_checked_and_followed():
    args = ("bench", "--preset", "fashion", "--batch-size", "2", "--threads", "1", "--rounds", "1", "--json")
    environment = dict(os.environ, SLIDEFORMER_GEMM="aten")
    forced = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600, env=environment)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["linear_backends"] == ("linear layers: forward ATen, backward ATen "
                                                            "(SLIDEFORMER_GEMM=aten)")
    environment["SLIDEFORMER_GEMM"] = "mkl"
    refused = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600, env=environment)
    assert refused.returncode != 0
    assert "SLIDEFORMER_GEMM: expected auto, onednn or aten, got 'mkl'" in refused.stderr
