"""`slideformer video-demo`: a short run trains the video model and its single-frame twin on moving
Fashion-MNIST clips, prints both accuracies and their margin, and writes a TorchScript model that
classifies clips in Python; bad options are named."""
import re

import pytest
import torch

from conftest import FASHION_DATA, program_result, run_program


def test_a_short_run_reports_both_models_and_exports_the_video_model(tmp_path):
    out = tmp_path / "video.pt"
    stdout = run_program("video-demo", "--data", FASHION_DATA, "--train-clips", 64, "--test-clips", 40, "--epochs", 2,
                         "--batch-size", 16, "--threads", 2, "--out", out)
    for name in ("video", "single frame"):
        assert len(re.findall(rf"{name} epoch \d/2: loss [\d.]+, test accuracy [\d.]+%", stdout)) == 2
    summary = re.search(r"test accuracy: video model ([\d.]+)%, single-frame model ([\d.]+)%, margin ([+-][\d.]+) "
                        r"points", stdout)
    assert summary, stdout
    video, frame, margin = map(float, summary.groups())
    assert 0 <= video <= 100 and 0 <= frame <= 100
    assert margin == pytest.approx(video - frame, abs=0.011)
    # The last epoch's line of the video model gives the same accuracy as the summary.
    last = re.findall(r"video epoch 2/2: .*test accuracy ([\d.]+)%", stdout)[0]
    assert float(last) == video

    model = torch.jit.load(str(out))
    clips = torch.rand(3, 1, 8, 48, 48)
    logits = model(clips)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs: must be an integer in [1, 1000], got '0'"),
    (["--train-clips", "-3"], "--train-clips: must be an integer >= 1, got '-3'"),
    (["--lr", "nan"], "--lr: must be a number > 0, got 'nan'"),
    (["--data", "/nonexistent"], "/nonexistent/train-images-idx3-ubyte.gz"),
])
def test_bad_options_are_named(args, message):
    result = program_result("video-demo", *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
