"""`slideformer train --amp bf16|fp16`: the recipe is stored in the checkpoint, a resumed run ends
with the bits of an uninterrupted one (one process and --nproc 2), the float16 loss scale and its
skipped steps are reported, and a resume with another --amp is refused. (The loss scale's rules:
tests/app/test_grad_scaler.cpp; the models under autocast: test_autocast.py.)"""
import json

import pytest
import torch

from test_cli import assert_same_tensors, checkpoint_tensors, checked, run

# float16 matrix products are slow on CPUs without float16 instructions: few, small steps.
ARGS = ["--preset", "fashion", "--limit", "96", "--batch-size", "32", "--threads", "1", "--augment",
        "--epochs", "2"]


def metrics(out):
    """metrics.jsonl without its timings."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k in ("epoch", "train_loss", "test_accuracy", "skipped_steps", "loss_scale")}
            for m in lines]


def straight_and_resumed(tmp_path, amp, nproc=()):
    """Checkpoints of a 2-epoch run and of the same run stopped after 1 epoch and resumed."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    checked("train", *ARGS, "--amp", amp, *nproc, "--out", straight)
    checked("train", *ARGS, "--amp", amp, *nproc, "--stop-after", "1", "--out", split)
    checked("train", "--resume", "--threads", "1", *nproc, "--out", split)
    assert torch.jit.load(str(split / "checkpoint.pt")).amp == amp
    assert metrics(split) == metrics(straight)
    assert_same_tensors(checkpoint_tensors(split / "checkpoint.pt"), checkpoint_tensors(straight / "checkpoint.pt"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_resumed_amp_run_ends_with_the_bits_of_an_uninterrupted_one(tmp_path, amp):
    straight_and_resumed(tmp_path, amp)


def test_a_resumed_nproc_amp_run_ends_with_the_bits_of_an_uninterrupted_one(tmp_path):
    straight_and_resumed(tmp_path, "bf16", ("--nproc", "2"))


def test_fp16_reports_its_loss_scale_and_skipped_steps(tmp_path):
    out = tmp_path / "fp16"
    stdout = checked("train", *ARGS, "--amp", "fp16", "--out", out)
    assert "mixed precision (fp16)" in stdout.splitlines()[0]
    assert stdout.count("steps skipped (inf/NaN gradients in float16)") == 2
    skipped = 0
    for epoch in metrics(out):
        # Each skipped step halves the scale; it grows only after 2000 good steps in a row.
        skipped += epoch["skipped_steps"]
        assert epoch["loss_scale"] == 65536 / 2 ** skipped, epoch


def test_bf16_changes_the_training_and_reports_no_loss_scale(tmp_path):
    bf16 = checked("train", *ARGS, "--amp", "bf16", "--stop-after", "1", "--out", tmp_path / "bf16")
    checked("train", *ARGS, "--stop-after", "1", "--out", tmp_path / "float32")
    assert "mixed precision (bf16)" in bf16.splitlines()[0] and "skipped" not in bf16
    assert "loss_scale" not in metrics(tmp_path / "bf16")[0]
    assert not torch.equal(checkpoint_tensors(tmp_path / "bf16" / "checkpoint.pt")["model.head.weight"],
                           checkpoint_tensors(tmp_path / "float32" / "checkpoint.pt")["model.head.weight"])


def test_resume_with_another_amp_is_refused(tmp_path):
    out = tmp_path / "run"
    checked("train", *ARGS, "--amp", "bf16", "--stop-after", "1", "--out", out)
    result = run("train", "--resume", "--amp", "none", "--out", out)
    assert result.returncode != 0
    assert (f"{out}/checkpoint.pt: --amp none differs from the checkpoint's bf16 (a resumed run keeps its "
            "settings: leave --amp out, or train into another --out)") in result.stderr


def test_an_unknown_amp_is_refused(tmp_path):
    result = run("train", "--amp", "fp8", "--out", tmp_path / "run")
    assert result.returncode != 0
    assert "--amp: fp8 not in {none,bf16,fp16}" in result.stderr, result.stderr
