"""Scripts a small image classifier built on torch.ops.slideformer.attention and saves it.

    python script_attention_model.py LIBRARY OUT.pt
Then `run_scripted OUT.pt 4 1 28 28` runs it from C++, and this script's `--check` compares.
"""
import argparse

import torch


class TinyAttentionClassifier(torch.nn.Module):
    """Patchify 28x28 into 7x7 tokens, one attention layer with a learned bias, pool, classify."""

    def __init__(self, channels: int = 32, heads: int = 4, classes: int = 10):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Conv2d(1, channels, 4, stride=4)
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.bias = torch.nn.Parameter(torch.zeros(heads, 49, 49))
        self.head = torch.nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images).flatten(2).transpose(1, 2)  # (B, 49, C)
        b, n, c = tokens.shape
        qkv = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mixed = torch.ops.slideformer.attention(qkv[0], qkv[1], qkv[2], self.bias, False, None)
        return self.head(mixed.transpose(1, 2).reshape(b, n, c).mean(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("out")
    parser.add_argument("--check", action="store_true", help="reload OUT and print its checksum")
    args = parser.parse_args()
    torch.ops.load_library(args.library)
    if not args.check:
        torch.manual_seed(0)
        torch.jit.script(TinyAttentionClassifier().eval()).save(args.out)
        print(f"saved scripted model to {args.out}")
        return
    model = torch.jit.load(args.out)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.rand(4, 1, 28, 28))
    print(f"python: output shape {list(out.shape)} checksum {out.sum().item():.6f}")


if __name__ == "__main__":
    main()
