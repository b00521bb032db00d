"""Tests for protohead.data.batched_decode: file bytes -> decoded, padded batches on a device.

The batched path must give the pixels of a per-image decode, route everything it cannot decode
exactly (other formats, grayscale, CMYK, truncated files) through PIL, follow the PIL loaders'
skip-bad-images policy, and feed BatchedMultiCrop crops distributed like the PIL pipeline's.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

import protohead.data.batched_decode as bd
from protohead.augment.batched import BatchedMultiCrop
from protohead.augment.image_batch import pad_images
from protohead.augment.multicrop import MultiCropTransform
from protohead.data import UnreadableImageError
from protohead.data.batched_decode import BatchedDecoder, batchable_jpeg, decode_images
from protohead.data.encoded import EncodedImage

pytestmark = [
    pytest.mark.usefixtures("single_thread"),  # see tests/conftest.py
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities"),
]


def pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some noise: JPEG-friendly, every channel different."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([200 * xx + 30, 180 * (1 - yy) + 40, 100 + 90 * xx * yy], axis=-1)
    return np.clip(base + g.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: Any) -> Tensor:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def jpeg(h: int, w: int, seed: int = 0, **kwargs: Any) -> Tensor:
    return encode(Image.fromarray(pixels(h, w, seed)), **{"quality": 90, **kwargs})


def pil_decode(data: Tensor) -> Tensor:
    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def patched_marker(data: Tensor, old: int, new: int) -> Tensor:
    """The file with its first ``0xFF old`` marker replaced by ``0xFF new``."""
    raw = bytearray(data.numpy().tobytes())
    at = raw.find(bytes([0xFF, old]))
    raw[at + 1] = new
    return torch.frombuffer(raw, dtype=torch.uint8)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the batch size of every call of the batched JPEG decoder."""
    calls: list[int] = []
    real = bd._decode_jpegs

    def recording(datas: list[Tensor], device: torch.device) -> list[Tensor]:
        calls.append(len(datas))
        return real(datas, device)

    monkeypatch.setattr(bd, "_decode_jpegs", recording)
    return calls


def test_batched_decode_equals_per_image_decode(spy):
    files = [
        jpeg(37, 53, 0),
        jpeg(64, 48, 1, subsampling=0),  # 4:4:4
        jpeg(20, 90, 2, progressive=True),
        jpeg(33, 31, 3, subsampling=1),  # 4:2:2
    ]
    out = decode_images(files)
    assert spy == [4]  # one call for the whole batch
    assert out.kept == [0, 1, 2, 3] and out.skipped == []
    for data, image in zip(files, out.images, strict=True):
        assert image.dtype == torch.uint8 and image.device.type == "cpu"
        assert torch.equal(image, decode_jpeg(data, mode=ImageReadMode.RGB))
        # torchvision and PIL both use libjpeg-turbo with the same settings.
        torch.testing.assert_close(image, pil_decode(data), atol=1, rtol=0)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: jpeg(16, 24), True),
        (lambda: jpeg(16, 24, progressive=True), True),
        (lambda: jpeg(16, 24, optimize=True, subsampling=0), True),
        (lambda: torch.cat([jpeg(16, 24), torch.zeros(50, dtype=torch.uint8)]), True),
        (lambda: encode(Image.new("L", (16, 24), 90)), False),  # grayscale
        (lambda: encode(Image.fromarray(pixels(16, 24)).convert("CMYK")), False),
        (lambda: encode(Image.fromarray(pixels(16, 24)), keep_rgb=True), False),  # RGB-coded
        (lambda: encode(Image.fromarray(pixels(16, 24)), "PNG"), False),
        (lambda: jpeg(40, 40)[:-60], False),  # truncated
        (lambda: patched_marker(jpeg(16, 24), 0xC0, 0xC9), False),  # arithmetic coding
        (lambda: patched_marker(jpeg(16, 24), 0xC0, 0xC3), False),  # lossless
        (lambda: torch.tensor([0xFF, 0xD8, 0xFF], dtype=torch.uint8), False),
        (lambda: torch.tensor(list(b"\xff\xd8\xff\xe0 not a jpeg"), dtype=torch.uint8), False),
    ],
    ids=[
        "baseline",
        "progressive",
        "optimized-444",
        "trailing-bytes",
        "grayscale",
        "cmyk",
        "rgb-coded",
        "png",
        "truncated",
        "arithmetic",
        "lossless",
        "too-short",
        "garbage",
    ],
)
def test_batchable_jpeg_reads_the_header(make, expected):
    assert batchable_jpeg(make()) is expected


def test_rgb_coded_jpegs_are_recognised_by_either_sign():
    raw = bytearray(encode(Image.fromarray(pixels(16, 24)), keep_rgb=True).numpy().tobytes())
    frame = raw.find(b"\xff\xc0")
    assert raw[frame + 10 : frame + 19 : 3] == b"RGB"
    adobe_only = bytearray(raw)
    adobe_only[frame + 10 : frame + 19 : 3] = b"\x01\x02\x03"
    ids_only = bytearray(raw)
    ids_only[raw.find(b"\xff\xee") + 1] = 0xEF  # APP14 -> APP15: no Adobe segment
    for variant in (adobe_only, ids_only):
        assert not batchable_jpeg(torch.frombuffer(variant, dtype=torch.uint8))
    adobe_only[raw.find(b"\xff\xee") + 15] = 1  # transform 1: YCbCr after all
    assert batchable_jpeg(torch.frombuffer(adobe_only, dtype=torch.uint8))


def test_twelve_bit_jpegs_are_not_batchable():
    raw = bytearray(jpeg(16, 24).numpy().tobytes())
    raw[raw.find(b"\xff\xc0") + 4] = 12  # the frame's sample precision
    assert not batchable_jpeg(torch.frombuffer(raw, dtype=torch.uint8))


def test_other_files_are_decoded_one_by_one_like_pil(spy):
    rgba = Image.fromarray(np.dstack([pixels(12, 10), np.full((12, 10), 128, np.uint8)]))
    files = {
        "png": encode(rgba, "PNG"),
        "palette": encode(Image.fromarray(pixels(9, 14)).convert("P"), "PNG"),
        "gray": encode(Image.fromarray(pixels(15, 11)[..., 0])),
        "cmyk": encode(Image.fromarray(pixels(13, 17)).convert("CMYK")),
        "rgb-coded": encode(Image.fromarray(pixels(13, 17)), keep_rgb=True),
        "bmp": encode(Image.fromarray(pixels(5, 6)), "BMP"),
        "jpeg": jpeg(21, 19),
    }
    out = decode_images(list(files.values()))
    assert spy == [1]  # only the plain JPEG is batched
    for (name, data), image in zip(files.items(), out.images, strict=True):
        assert image.shape[0] == 3, name
        torch.testing.assert_close(image, pil_decode(data), atol=1, rtol=0, msg=name)
    # CMYK is converted to RGB like PIL does, not read as three of its four channels.
    assert torch.equal(out.images[3], pil_decode(files["cmyk"]))


def test_a_jpeg_the_batched_decoder_rejects_is_found_and_decoded_by_pil(monkeypatch):
    good, poisoned = jpeg(18, 22, 0), jpeg(30, 26, 1)
    calls: list[int] = []
    real = bd._decode_jpegs

    def picky(datas: list[Tensor], device: torch.device) -> list[Tensor]:
        calls.append(len(datas))
        if any(d is poisoned for d in datas):  # as nvJPEG failing on one file of a batch
            raise RuntimeError("Error while decoding JPEG images")
        return real(datas, device)

    monkeypatch.setattr(bd, "_decode_jpegs", picky)
    out = decode_images([good, poisoned, good])
    assert calls == [3, 1, 1, 1]  # the batch, then each file alone
    assert out.kept == [0, 1, 2] and out.skipped == []
    assert torch.equal(out.images[1], pil_decode(poisoned))
    assert torch.equal(out.images[2], decode_jpeg(good, mode=ImageReadMode.RGB))


def bad_batch(tmp_path) -> list[EncodedImage]:
    files = {
        "ok.jpg": jpeg(20, 24).numpy().tobytes(),
        "corrupt.jpg": b"\xff\xd8\xff\xe0 truncated jpeg",
        "ok.png": encode(Image.fromarray(pixels(8, 9)), "PNG").numpy().tobytes(),
        "cut.jpg": jpeg(40, 40).numpy().tobytes()[:-80],
    }
    images = []
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        images.append(EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), name))
    return images


def test_corrupt_file_raises_naming_it_by_default(tmp_path):
    images = bad_batch(tmp_path)
    with pytest.raises(UnreadableImageError, match=r"cannot read image file 'corrupt.jpg': ") as e:
        decode_images(images)
    assert e.value.path == "corrupt.jpg" and "--skip-bad-images" in str(e.value)
    with pytest.raises(UnreadableImageError, match=r"'cut.jpg': OSError: image file is truncated"):
        BatchedDecoder("cpu")([images[0], images[3]], torch.tensor([0, 1]))
    unnamed = [image.data for image in images]
    with pytest.raises(UnreadableImageError, match=r"'<images\[1\]>'"):
        decode_images(unnamed)


def test_corrupt_files_are_dropped_and_counted_when_skipping(tmp_path):
    images = bad_batch(tmp_path)
    out = decode_images(images, skip_bad_images=True)
    assert out.kept == [0, 2]
    assert [s.path for s in out.skipped] == ["corrupt.jpg", "cut.jpg"]
    assert "truncated" in out.skipped[1].reason
    batch = BatchedDecoder("cpu", skip_bad_images=True)(images, torch.tensor([5, 6, 7, 8]))
    assert batch.skipped == 2 and batch.labels.tolist() == [5, 7]
    assert batch.sizes.tolist() == [[20, 24], [8, 9]] and batch.images.shape == (2, 3, 20, 24)
    assert torch.equal(batch.images[1, :, :8, :9], pil_decode(images[2].data))
    assert int(batch.images[1, :, 8:].abs().sum()) == 0  # zero padding
    with pytest.raises(UnreadableImageError, match="all 2 images of a batch are unreadable"):
        decode_images([images[1], images[3]], skip_bad_images=True)


def test_padded_batch_equals_pad_images_of_the_decoded_images():
    files = [jpeg(20, 31, 0), encode(Image.fromarray(pixels(26, 12)), "PNG"), jpeg(9, 40, 2)]
    decoded = decode_images(files)
    expected, sizes = pad_images(decoded.images)
    batch = BatchedDecoder("cpu")(files, torch.tensor([0, 1, 2]))
    assert torch.equal(batch.images, expected) and torch.equal(batch.sizes, sizes)
    assert batch.images.dtype == torch.uint8 and batch.sizes.dtype == torch.int64


def test_max_side_shrinks_only_large_images_keeping_the_aspect():
    big, small = jpeg(120, 300, 0), jpeg(50, 40, 1)
    png = encode(Image.fromarray(pixels(200, 90)), "PNG")
    out = decode_images([big, small, png], max_side=100)
    assert [tuple(i.shape) for i in out.images] == [(3, 40, 100), (3, 50, 40), (3, 100, 45)]
    full = decode_jpeg(big, mode=ImageReadMode.RGB)
    expected = F.resize(full, [40, 100], InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(out.images[0], expected)
    assert torch.equal(out.images[1], decode_jpeg(small, mode=ImageReadMode.RGB))
    batch = BatchedDecoder("cpu", max_side=100)([big, small], torch.tensor([0, 1]))
    assert batch.images.shape == (2, 3, 50, 100) and batch.sizes.tolist() == [[40, 100], [50, 40]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_side": 0}, ValueError, r"max_side must be an int >= 1, got 0"),
        ({"max_side": 2.5}, TypeError, r"max_side must be an int, got float 2\.5"),
        ({"max_side": True}, TypeError, r"max_side must be an int, got bool True"),
    ],
)
def test_settings_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchedDecoder("cpu", **kwargs)
    with pytest.raises(error, match=match):
        decode_images([jpeg(8, 8)], **kwargs)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([], ValueError, "at least one encoded image"),
        (jpeg(8, 8), TypeError, "must be a sequence of encoded images"),
        ([torch.zeros(5)], TypeError, r"images\[0\] must be .* got dtype torch.float32"),
        ([b"\xff\xd8"], TypeError, r"images\[0\] .* got bytes"),
        ([torch.zeros(2, 3, dtype=torch.uint8)], ValueError, r"1-D CPU .* shape \(2, 3\)"),
        ([torch.zeros(0, dtype=torch.uint8)], ValueError, r"non-empty .* shape \(0,\)"),
    ],
)
def test_bad_inputs_are_rejected(images, error, match):
    with pytest.raises(error, match=match):
        decode_images(images)


def test_labels_must_match_the_images():
    decoder = BatchedDecoder("cpu")
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), one per image, got"):
        decoder([jpeg(8, 8)] * 2, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="labels must be an integer tensor, got dtype"):
        decoder([jpeg(8, 8)], torch.tensor([1.0]))
    assert "max_side=None" in repr(decoder)


def crop_statistics(x: Tensor) -> Tensor:
    """Per crop: channel means, pixel std and colourfulness (mean max - min over channels)."""
    colourfulness = (x.amax(1) - x.amin(1)).mean((1, 2))
    return torch.cat([x.mean((2, 3)), x.std((1, 2, 3))[:, None], colourfulness[:, None]], 1)


def test_crops_of_decoded_bytes_match_the_pil_pipeline():
    # Same files through (PIL decode -> MultiCropTransform) and (bytes -> BatchedDecoder ->
    # BatchedMultiCrop on the padded batch): the per-crop pixel statistics must have the same
    # distributions (KS tests, seeds fixed, so deterministic). Two image sizes, so padding and
    # sizes matter; a channel swap, ignoring sizes or a broken decode fails it.
    ks_2samp = pytest.importorskip("scipy.stats").ks_2samp
    n = 150
    files = [jpeg(64, 64, 0, quality=95), jpeg(48, 80, 1, quality=95)]
    settings = {"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2}
    torch.manual_seed(0)
    cpu = MultiCropTransform(**settings)
    decoded = [Image.open(io.BytesIO(f.numpy().tobytes())).convert("RGB") for f in files]
    ref = [cpu(img) for img in decoded for _ in range(n)]
    batch = BatchedDecoder("cpu")([f for f in files for _ in range(n)], torch.zeros(2 * n).long())
    assert batch.images.shape == (2 * n, 3, 64, 80)
    ours = BatchedMultiCrop(**settings)(
        batch.images, batch.sizes, generator=torch.Generator().manual_seed(0)
    )
    pairs = {
        "global": (torch.stack([r[0] for r in ref]), ours[0]),
        "local": (torch.stack([c for r in ref for c in r[1:]]), torch.cat(ours[1:])),
    }
    for kind, (a, b) in pairs.items():
        stats_a, stats_b = crop_statistics(a), crop_statistics(b)
        for j, name in enumerate(["mean r", "mean g", "mean b", "std", "colourfulness"]):
            p = ks_2samp(stats_a[:, j].double().numpy(), stats_b[:, j].double().numpy()).pvalue
            assert p > 1e-4, (kind, name, p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_matches_the_cpu_within_decoder_differences():
    files = [jpeg(37, 53, 0), jpeg(64, 48, 1, progressive=True), encode(Image.new("L", (9, 7)))]
    gpu = decode_images(files, "cuda", max_side=50)
    cpu = decode_images(files, "cpu", max_side=50)
    for a, b in zip(gpu.images, cpu.images, strict=True):
        assert a.device.type == "cuda" and a.shape == b.shape
        # nvJPEG's IDCT and chroma upsampling differ slightly from libjpeg-turbo's.
        assert (a.cpu().float() - b.float()).abs().mean() < 2.0
    batch = BatchedDecoder("cuda")(files, torch.tensor([0, 1, 2]))
    assert batch.images.device.type == batch.sizes.device.type == "cuda"
