"""The data layer (slideformer::data) against Pillow and torchvision, through its test probe
(tests/data/data_probe.cpp, torch.ops.slideformer_data_test): decoded pixels of real photographs,
the eval transform, and the RandomResizedCrop draws and their application."""
import importlib.util
import io
import pathlib
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from scipy import stats
from torchvision.transforms import v2

# Photographs shipped inside the scikit-image wheel (skimage/data), nothing downloaded.
PHOTO_DIR = pathlib.Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
          "hubble_deep_field.jpg", "camera.png"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PILLOW_LIMIT = 178956970
probe = torch.ops.slideformer_data_test


def photo(name):
    return Image.open(PHOTO_DIR / name)


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def as_tensor(data):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode(data, channels=3, min_width=0, min_height=0, name="image"):
    return probe.decode(as_tensor(data), name, channels, min_width, min_height, PILLOW_LIMIT)


def pillow_pixels(image, mode="RGB"):
    array = np.asarray(image.convert(mode))
    return torch.from_numpy(array.copy()).reshape(image.height, image.width, -1)


def max_difference(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.int() - b.int()).abs().max().item()


JPEG_VARIANTS = {
    "q90-420": dict(quality=90, subsampling=2),
    "q95-444": dict(quality=95, subsampling=0),
    "q75-422": dict(quality=75, subsampling=1),
    "progressive": dict(quality=90, progressive=True),
}


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("variant", JPEG_VARIANTS)
def test_jpeg_pixels_match_pillow(name, variant):
    image = photo(name)
    data = encode(image.convert("RGB") if image.mode not in ("L", "RGB") else image, "JPEG", **JPEG_VARIANTS[variant])
    reference = Image.open(io.BytesIO(data))
    # Both decoders are libjpeg-turbo: equal, or 1 level apart where their IDCTs differ.
    assert max_difference(decode(data), pillow_pixels(reference)) <= 1
    assert max_difference(decode(data, channels=1), pillow_pixels(reference, "L")) <= 1


@pytest.mark.parametrize("name", ["rocket.jpg", "hubble_deep_field.jpg"])
def test_shipped_jpegs_match_pillow_at_full_size_and_with_dct_scaling(name):
    data = (PHOTO_DIR / name).read_bytes()
    assert max_difference(decode(data), pillow_pixels(photo(name))) <= 1
    for factor in (2, 4, 8):
        reference = photo(name)
        width, height = reference.size
        reference.draft("RGB", (width // factor, height // factor))  # Pillow's DCT scaling
        scaled = decode(data, min_width=width // factor, min_height=height // factor)
        assert (scaled.shape[1], scaled.shape[0]) == reference.size
        assert max_difference(scaled, pillow_pixels(reference)) <= 1


def test_cmyk_and_gray_jpegs_match_pillow():
    image = photo("chelsea.png")
    for mode in ("CMYK", "L"):
        data = encode(image.convert(mode), "JPEG", quality=90)
        reference = Image.open(io.BytesIO(data))
        assert reference.mode == mode
        assert max_difference(decode(data), pillow_pixels(reference)) <= 1
        assert max_difference(decode(data, channels=1), pillow_pixels(reference, "L")) <= 1


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("variant", [*JPEG_VARIANTS, "gray"])
def test_region_decode_equals_the_full_decode_on_the_region(name, variant):
    """The train transform decodes only the rows and columns around its crop: inside the crop box
    its pixels are the full decode's, at full size and with DCT scaling."""
    gray = variant == "gray"
    data = encode(photo(name).convert("L" if gray else "RGB"), "JPEG",
                  **(dict(quality=90) if gray else JPEG_VARIANTS[variant]))
    width, height = Image.open(io.BytesIO(data)).size
    generator = torch.Generator().manual_seed(0)
    for factor in (1, 2, 4):
        min_width, min_height = -(-width // factor), -(-height // factor)
        full = decode(data, channels=1 if gray else 3, min_width=min_width, min_height=min_height)
        boxes = [(0, 0, width // 3, height // 4), (width - width // 2, height - height // 3, width // 2, height // 3)]
        for _ in range(6):
            w, h = (int(torch.randint(1, n + 1, (1,), generator=generator)) for n in (width, height))
            boxes.append((int(torch.randint(width - w + 1, (1,), generator=generator)),
                          int(torch.randint(height - h + 1, (1,), generator=generator)), w, h))
        for x, y, w, h in boxes:
            pixels, (origin_x, origin_y, denominator) = probe.decode_region(as_tensor(data), [x, y, w, h],
                                                                            min_width, min_height)
            assert denominator == factor
            x0, y0 = x // factor, y // factor
            x1, y1 = -(-(x + w) // factor), -(-(y + h) // factor)
            assert origin_x <= x0 and origin_y <= y0
            assert origin_x + pixels.shape[1] >= x1 and origin_y + pixels.shape[0] >= y1
            ours = pixels[y0 - origin_y:y1 - origin_y, x0 - origin_x:x1 - origin_x]
            assert torch.equal(ours, full[y0:y1, x0:x1]), (factor, (x, y, w, h))


def test_train_transform_reports_a_truncated_jpeg_whatever_its_crop():
    data = encode(photo("chelsea.png"), "JPEG", quality=90)
    truncated = as_tensor(data[: len(data) * 9 // 10])
    for key in range(8):  # crops anywhere, most of them above the missing rows
        with pytest.raises(RuntimeError, match=r"cat\.jpg: truncated JPEG"):
            probe.transform(truncated, "cat.jpg", True, 64, 0.875, 3, MEAN, STD, 0.0, key)


def png_bytes(pixels, bit_depth, color_type):
    """A PNG written here (Pillow cannot write 16-bit colour): rows of big-endian samples."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2" if bit_depth == 16 else "u1").tobytes() for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "1"])
def test_png_pixels_equal_pillows(mode):
    image = photo("coffee.png")
    converted = image.quantize(64) if mode == "P" else image.convert(mode)
    data = encode(converted, "PNG")
    assert torch.equal(decode(data), pillow_pixels(Image.open(io.BytesIO(data))))
    assert torch.equal(decode(data, channels=1), pillow_pixels(Image.open(io.BytesIO(data)), "L"))


def test_16_bit_pngs_keep_the_high_byte():
    rgb = np.asarray(photo("astronaut.png")).astype(np.uint16) * 257 + 3
    gray = rgb[..., 0]
    assert torch.equal(decode(png_bytes(rgb, 16, 2)), torch.from_numpy((rgb >> 8).astype(np.uint8)))
    assert torch.equal(decode(png_bytes(gray, 16, 0), channels=1), torch.from_numpy((gray >> 8).astype(np.uint8))[..., None])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_exif_transpose(fmt, orientation):
    image = photo("chelsea.png").resize((61, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert max_difference(decode(data), pillow_pixels(upright)) <= (1 if fmt == "JPEG" else 0)
    width, height, _, found = probe.info(as_tensor(data), "image")
    assert (width, height, found) == (*upright.size, orientation)


def unit(normalised, mean=MEAN, std=STD):
    """Our normalised output back on the 0..1 scale."""
    return normalised * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


def eval_transform(data, size=224, crop_pct=0.875, dct_margin=0.0):
    return unit(probe.transform(as_tensor(data), "image", False, size, crop_pct, 3, MEAN, STD, dct_margin, 0))


@pytest.mark.parametrize("name", PHOTOS)
def test_eval_transform_matches_torchvision_resize_and_center_crop(name):
    data = encode(photo(name).convert("RGB"), "JPEG", quality=90)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Resize(256, antialias=True), v2.CenterCrop(224)])(image)
    on_pil = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToImage(),
                         v2.ToDtype(torch.float32, scale=True)])(image)
    ours = eval_transform(data)
    assert (ours - reference).abs().max() < 1e-4  # the same filter, in float
    assert (ours - on_pil).abs().max() < 1e-2     # Pillow rounds to 8 bits after each pass


def test_eval_transform_with_dct_scaling_stays_close_to_the_full_size_decode():
    data = (PHOTO_DIR / "retina.jpg").read_bytes()  # 1411 x 1411: decoded at 1/2 with margin 2
    image = Image.open(io.BytesIO(data)).convert("RGB")
    reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Resize(256, antialias=True), v2.CenterCrop(224)])(image)
    assert (eval_transform(data) - reference).abs().max() < 1e-4
    error = (eval_transform(data, dct_margin=2.0) - reference).abs()
    assert 1e-4 < error.max() < 3e-2 and error.mean() < 1e-3  # (measured: 1.3e-2, 4.1e-4)


def test_eval_transform_crop_pct_and_odd_sizes_follow_timm():
    data = encode(photo("rocket.jpg").crop((0, 0, 333, 427)), "PNG")
    image = Image.open(io.BytesIO(data))
    for size, crop_pct in [(96, 0.9), (97, 1.0), (50, 0.875)]:
        resize = int(size / crop_pct)  # timm: floor(size / crop_pct)
        reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                v2.Resize(resize, antialias=True), v2.CenterCrop(size)])(image)
        assert (eval_transform(data, size, crop_pct, 0) - reference).abs().max() < 1e-4, (size, crop_pct)


def test_random_resized_crop_draws_follow_torchvisions_distribution():
    count = 20000
    for width, height in [(500, 375), (120, 600)]:
        ours = probe.train_draws(width, height, count, 12345).double()
        torch.manual_seed(0)
        canvas = torch.empty(1, height, width)
        theirs = torch.tensor([v2.RandomResizedCrop.get_params(canvas, [0.08, 1.0], [3 / 4, 4 / 3])
                               for _ in range(count)], dtype=torch.float64)  # top, left, h, w
        theirs = theirs[:, [1, 0, 3, 2]]
        for name, of in {"area": lambda b: b[:, 2] * b[:, 3] / (width * height),
                         "log aspect": lambda b: (b[:, 2] / b[:, 3]).log(),
                         "center x": lambda b: (b[:, 0] + b[:, 2] / 2) / width,
                         "center y": lambda b: (b[:, 1] + b[:, 3] / 2) / height}.items():
            p = stats.ks_2samp(of(ours).numpy(), of(theirs).numpy()).pvalue
            assert p > 1e-3, f"{width}x{height} {name}: KS p = {p:.2e}"
        assert ((ours[:, 0] >= 0) & (ours[:, 0] + ours[:, 2] <= width)).all()
        assert ((ours[:, 1] >= 0) & (ours[:, 1] + ours[:, 3] <= height)).all()
        flips = ours[:, 4].mean().item()
        assert abs(flips - 0.5) < 4 * (0.25 / count) ** 0.5


def test_train_transform_is_torchvisions_resized_crop_and_flip_of_its_draws():
    data = encode(photo("coffee.png").resize((1200, 800), Image.LANCZOS), "JPEG", quality=90)
    image = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(Image.open(io.BytesIO(data)))
    height, width = image.shape[1:]
    errors = []
    for key in range(8):
        x, y, w, h, flip = probe.train_draws(width, height, 1, key)[0].tolist()
        expected = TF.resized_crop(image, y, x, h, w, [224, 224], antialias=True)
        if flip:
            expected = TF.horizontal_flip(expected)
        ours = probe.transform(as_tensor(data), "image", True, 224, 0.875, 3, MEAN, STD, 0.0, key)
        assert (unit(ours) - expected).abs().max() < 1e-4, key
        # DCT scaling (the default), where the crop box stays at least 224 x 224 at the reduced scale.
        scaled = unit(probe.transform(as_tensor(data), "image", True, 224, 0.875, 3, MEAN, STD, 1.0, key))
        errors.append((scaled - expected).abs().mean().item())
    assert max(errors) < 1e-2 and sum(error > 1e-4 for error in errors) >= 3, errors


def test_bad_images_name_the_file():
    with pytest.raises(RuntimeError, match=r"holiday\.jpg: not a JPEG or PNG image"):
        decode(b"GIF89a....", name="holiday.jpg")
    data = encode(photo("chelsea.png"), "JPEG")
    with pytest.raises(RuntimeError, match=r"cat\.jpg: truncated JPEG"):
        decode(data[: len(data) // 3], name="cat.jpg")
