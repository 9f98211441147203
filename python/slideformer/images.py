"""Image files through an exported model, in Python: the Python side of `slideformer predict FILE...`.

An exported model (`slideformer export`) carries its data config: a TorchScript model as the
extra file ``data_config.json``, an AOTInductor package (.pt2) and an ONNX file as metadata under
that name: class names, channels, input size, mean, std and crop_pct. With it, a
deployed model needs nothing else:

    import slideformer.images as images
    model, config = images.load_model("model.pt")
    for file, top in images.predict(model, config, ["photo.jpg"]):
        print(file, top)                     # [("Sneaker", 0.93), ("Sandal", 0.04), ...]

`eval_transform` is the C++ eval transform (docs/data.md) in Pillow and torch: the upright
image (EXIF orientation), RGB or gray as the model takes it, the short side resized to
floor(size / crop_pct) with antialiasing, the central size x size, on the 0..1 scale (the model
normalises it). Decoding needs Pillow, which the package does not depend on.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

DATA_CONFIG_FILE = "data_config.json"


def load_model(path):
    """The exported model and its data config (a dict): a TorchScript model (put in eval mode),
    or an AOTInductor package (.pt2) whose metadata holds the config."""
    if os.fspath(path).endswith(".pt2"):
        model = torch._inductor.aoti_load_package(os.fspath(path))
        config = model.get_metadata().get(DATA_CONFIG_FILE, "")
    else:
        extra = {DATA_CONFIG_FILE: ""}
        model = torch.jit.load(str(path), _extra_files=extra).eval()
        config = extra[DATA_CONFIG_FILE]
    if not config:
        raise ValueError(f"{path}: the model holds no data config ({DATA_CONFIG_FILE}): export it again")
    return model, json.loads(config)


def eval_transform(image, config):
    """A (channels, size, size) float tensor on the 0..1 scale of an image file (path or file
    object) or a PIL image."""
    try:
        from PIL import Image, ImageOps
    except ImportError as error:  # pragma: no cover
        raise ImportError("slideformer.images decodes with Pillow: pip install pillow") from error
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = ImageOps.exif_transpose(image).convert("L" if config["channels"] == 1 else "RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = pixels.view(image.height, image.width, -1).permute(2, 0, 1).float().div(255)
    size = config["image_size"]
    short = math.floor(size / config["crop_pct"] + 1e-9)
    height, width = x.shape[1:]
    if width <= height:
        new_width, new_height = short, int(short * height / width)
    else:
        new_width, new_height = int(short * width / height), short
    x = F.interpolate(x[None], size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = round((new_height - size) / 2), round((new_width - size) / 2)  # half to even, as torchvision
    return x[:, top:top + size, left:left + size]


def predict(model, config, files, top=5, batch_size=32):
    """[(file, [(class name, probability), ...]), ...]: the `top` most probable classes of each file."""
    names = config["class_names"]
    results = []
    for start in range(0, len(files), batch_size):
        chunk = list(files[start:start + batch_size])
        with torch.no_grad():
            probabilities = model(torch.stack([eval_transform(f, config) for f in chunk])).float().softmax(1)
        values, indices = probabilities.topk(min(top, len(names)), dim=1)
        for file, p, i in zip(chunk, values.tolist(), indices.tolist()):
            results.append((str(file), [(names[c], q) for c, q in zip(i, p)]))
    return results
