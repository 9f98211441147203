"""python -m slideformer export --checkpoint CHECKPOINT --out FILE --format onnx|aoti

Exports the model of a checkpoint of the C++ program: ONNX (standard operators only) or an
AOTInductor package (.pt2). Like the TorchScript export, the model takes (N, C, H, W) floats in
[0, 1], normalises them itself and returns logits; the batch size stays free. `slideformer export
--format onnx|aoti` of the C++ program runs this.
"""
import argparse
import importlib
import sys

from .images import DATA_CONFIG_FILE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slideformer", description=__doc__.splitlines()[2])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export a checkpoint to ONNX or AOTInductor")
    export.add_argument("--checkpoint", required=True, help="checkpoint.pt of the slideformer program")
    export.add_argument("--out", required=True, help="file to write (.onnx or .pt2)")
    export.add_argument("--format", required=True, choices=["onnx", "aoti"])
    export.add_argument("--data-config", help="JSON of the data config to store in the file "
                        "(slideformer.images.DATA_CONFIG_FILE: class names, input size, mean, std, crop_pct)")
    args = parser.parse_args(argv)
    try:
        import slideformer

        exporter = importlib.import_module(f"slideformer.{args.format}")  # onnx needs the onnx packages
        model = slideformer.nn.InputNormalization(slideformer.load_checkpoint(args.checkpoint))
        metadata = {} if args.data_config is None else {DATA_CONFIG_FILE: args.data_config}
        exporter.export(model, args.out, metadata=metadata)
    except Exception as error:  # one line, as the C++ program reports its errors
        print(f"slideformer: error: {error}", file=sys.stderr)
        return 1
    config = model.model.config
    print(f"exported {args.checkpoint} to {args.out} ({args.format}): input (N, {config.in_channels}, "
          f"{config.image_size}, {config.image_size}) floats in [0, 1], output logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
