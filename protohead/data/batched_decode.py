"""Batched image decoding on the training device: file bytes -> padded uint8 batch.

The batch of encoded files from :func:`~protohead.data.encoded.encoded_collate` is decoded in
one ``torchvision.io.decode_jpeg`` call on the training device (nvJPEG on CUDA, libjpeg-turbo on
the CPU), optionally shrunk to a maximum side, and padded into the ``(b, 3, h, w)`` uint8 batch
plus valid sizes that :class:`~protohead.augment.batched.BatchedMultiCrop` crops.

Only plain 8-bit, three-component, Huffman-coded YCbCr JPEGs that end after their scans take
the batched path (:func:`batchable_jpeg`, read from the header on the host). Everything else,
PNG and other formats, grayscale, CMYK or RGB-coded JPEGs, and truncated files, is decoded on
the CPU, one image at a time, by PIL exactly as ``torchvision.datasets.ImageFolder`` loads it.
A JPEG that nvJPEG rejects falls back the same way. A file is therefore unreadable exactly when
the PIL pipeline cannot read it either, and unreadable files follow its policy: they raise
:class:`~protohead.data.UnreadableImageError` naming the file, or with
``skip_bad_images=True`` are dropped from the batch and counted.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from protohead import _validation as check
from protohead.augment.image_batch import pad_images
from protohead.data.collate import SkippedSample
from protohead.data.encoded import EncodedImage
from protohead.data.errors import UnreadableImageError

__all__ = ["BatchedDecoder", "DecodedBatch", "DecodedImages", "batchable_jpeg", "decode_images"]

# What PIL raises for undecodable files, as in protohead.data (UnidentifiedImageError and
# truncation are OSErrors, some broken headers SyntaxError, huge images DecompressionBombError).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; the call still works and
# the warning would fire on every batch.
_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"
# Start-of-frame markers of Huffman-coded baseline, extended and progressive JPEGs (nvJPEG
# decodes these; lossless and arithmetic-coded frames go to the CPU).
_HUFFMAN_SOF = (0xC0, 0xC1, 0xC2)
_OTHER_SOF = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # 0xC4 DHT, 0xC8 JPG, 0xCC DAC


def _name(image: EncodedImage | Tensor, index: int) -> str:
    return image.path if isinstance(image, EncodedImage) else f"<images[{index}]>"


def _bytes_of(image: object, index: int) -> Tensor:
    data = image.data if isinstance(image, EncodedImage) else image
    if not isinstance(data, Tensor) or data.dtype != torch.uint8:
        got = f"dtype {data.dtype}" if isinstance(data, Tensor) else type(data).__name__
        raise TypeError(
            f"images[{index}] must be an EncodedImage or a uint8 tensor of file bytes, got {got}"
        )
    if data.ndim != 1 or data.numel() == 0 or data.device.type != "cpu":
        raise ValueError(
            f"images[{index}] must be a non-empty 1-D CPU tensor of file bytes, got shape "
            f"{tuple(data.shape)} on {data.device}"
        )
    return data if data.is_contiguous() else data.contiguous()


def batchable_jpeg(data: Tensor) -> bool:
    """Whether a file is a JPEG that the batched path decodes exactly like libjpeg does.

    True for an 8-bit, three-component (YCbCr) baseline, extended or progressive JPEG with
    Huffman coding whose end-of-image marker follows its first scan. False for other formats,
    grayscale or four-component (CMYK/YCCK) JPEGs, RGB-coded ones (Adobe transform 0, or
    component ids ``R G B``), lossless or arithmetic-coded frames, truncated files and malformed
    headers: those are decoded per image on the CPU. Reads only the header segments (and
    searches the tail for the end marker), on the host.

    Args:
        data: The file's bytes, a 1-D uint8 CPU tensor.

    Example:
        >>> import io
        >>> def jpeg(mode):
        ...     buf = io.BytesIO()
        ...     Image.new(mode, (8, 8)).save(buf, "JPEG")
        ...     return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        >>> rgb = jpeg("RGB")
        >>> batchable_jpeg(rgb), batchable_jpeg(jpeg("L")), batchable_jpeg(rgb[:-40])
        (True, False, False)
    """
    view = data.numpy().data
    n = len(view)
    if n < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return False
    pos, frame_ok, adobe_rgb = 2, False, False
    while pos + 4 <= n:
        if view[pos] != 0xFF:
            return False  # bytes between segments: leave the judgement to libjpeg
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        body, end = pos + 4, pos + 2 + length
        if length < 2 or end > n:
            return False
        if marker == 0xDA:  # start of scan: the frame has been seen, or it never will be
            # Entropy-coded data stuffs every 0xFF with 0x00 (or a restart marker), so an
            # end-of-image marker past the first scan header means the file is complete.
            tail_ok = bytes(view[-2:]) == b"\xff\xd9" or bytes(view[end:]).find(b"\xff\xd9") >= 0
            return frame_ok and not adobe_rgb and tail_ok
        if marker in _HUFFMAN_SOF:
            if length < 17:  # 8 header bytes + 3 per component, 3 components
                return False
            precision, components = view[body], view[body + 5]
            height = (view[body + 1] << 8) | view[body + 2]
            width = (view[body + 3] << 8) | view[body + 4]
            ids = bytes(view[body + 6 : body + 15 : 3])
            frame_ok = precision == 8 and components == 3 and height > 0 and width > 0
            frame_ok = frame_ok and ids != b"RGB"
        elif marker in _OTHER_SOF:
            return False
        elif marker == 0xEE and length >= 14 and bytes(view[body : body + 5]) == b"Adobe":
            adobe_rgb = view[body + 11] == 0  # colour transform 0: the components are RGB
        pos = end
    return False


def _decode_jpegs(datas: list[Tensor], device: torch.device) -> list[Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return list(out)


def _decode_pil(data: Tensor) -> Tensor:
    """PIL's decode, as ``torchvision.datasets.folder.pil_loader``: ``(3, h, w)`` uint8."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        rgb = img.convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _fit(image: Tensor, max_side: int | None) -> Tensor:
    """Shrinks ``(c, h, w)`` so that its longer side is ``max_side`` (aspect kept)."""
    h, w = image.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    resized: Tensor = F.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
    return resized


def _check_max_side(max_side: object) -> int | None:
    if max_side is None:
        return None
    return check.integer("max_side", max_side, 1)


def _pad(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`~protohead.augment.image_batch.pad_images` in the decoders' memory layout.

    libjpeg-turbo and PIL return ``(h, w, c)`` memory viewed as ``(c, h, w)``; copying that into a
    contiguous batch transposes every pixel (a quarter of the decode's time). A channels-last
    batch takes plain row copies instead, and the augmenter's float conversion, a full pass
    anyway, reads either layout. nvJPEG's planar output keeps the contiguous layout.
    """
    if images[0].stride(0) != 1:
        return pad_images(images)
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    device = images[0].device
    batch = torch.zeros((len(images), h, w, 3), dtype=torch.uint8, device=device)
    for k, image in enumerate(images):
        batch[k, : image.shape[1], : image.shape[2]] = image.permute(1, 2, 0)
    sizes = torch.tensor([list(i.shape[1:]) for i in images], dtype=torch.int64)
    return batch.permute(0, 3, 1, 2), sizes.to(device, non_blocking=True)


class DecodedImages(NamedTuple):
    """The readable images of a batch, decoded.

    Attributes:
        images: uint8 ``(3, h_i, w_i)`` images on the target device, in input order.
        kept: Their indices in the input.
        skipped: The unreadable files (empty unless skipping).

    Example:
        >>> out = DecodedImages([torch.zeros(3, 2, 2, dtype=torch.uint8)], [1],
        ...                     [SkippedSample("a.jpg", "broken")])
        >>> out.kept, [s.path for s in out.skipped]
        ([1], ['a.jpg'])
    """

    images: list[Tensor]
    kept: list[int]
    skipped: list[SkippedSample]


def decode_images(
    images: Sequence[EncodedImage | Tensor],
    device: str | torch.device = "cpu",
    *,
    max_side: int | None = None,
    skip_bad_images: bool = False,
) -> DecodedImages:
    """Decodes encoded image files to RGB uint8 tensors on ``device``, JPEGs in one batch.

    :func:`batchable_jpeg` files go through one ``torchvision.io.decode_jpeg`` call on
    ``device`` (nvJPEG on CUDA); if that call fails they are retried one by one, and every file
    that is not batchable or fails alone is decoded on the CPU by PIL and copied to ``device``.
    No host sync beyond the decoder's own.

    Args:
        images: Non-empty sequence of :class:`~protohead.data.encoded.EncodedImage` or 1-D
            uint8 CPU tensors of file bytes, e.g. an
            :class:`~protohead.data.encoded.EncodedBatch`.
        device: Where to decode and return the images.
        max_side: Shrink images whose longer side exceeds it to that side (antialiased
            bilinear, aspect kept); bounds the padded batch's memory. ``None``: full size.
        skip_bad_images: Drop unreadable files (listed in ``skipped``) instead of raising.

    Raises:
        UnreadableImageError: Naming the first unreadable file (``skip_bad_images=False``),
            or the first of a batch in which no file is readable.
        TypeError: If an image is not an EncodedImage or a uint8 tensor, or ``max_side`` not an
            int.
        ValueError: If ``images`` is empty, an image not a non-empty 1-D CPU tensor, or
            ``max_side`` < 1.

    Example:
        >>> buf = io.BytesIO()
        >>> Image.new("RGB", (8, 6), "gray").save(buf, "JPEG")
        >>> jpeg = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        >>> out = decode_images([jpeg, torch.tensor([1, 2], dtype=torch.uint8)],
        ...                     max_side=4, skip_bad_images=True)
        >>> [tuple(i.shape) for i in out.images], out.kept, len(out.skipped)
        ([(3, 3, 4)], [0], 1)
    """
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of encoded images, got {type(images)}")
    if len(images) == 0:
        raise ValueError("images must hold at least one encoded image, got an empty sequence")
    max_side = _check_max_side(max_side)
    device = torch.device(device)
    datas = [_bytes_of(image, i) for i, image in enumerate(images)]
    out: list[Tensor | None] = [None] * len(datas)
    fast = [i for i, data in enumerate(datas) if batchable_jpeg(data)]
    retry: list[int] = []
    if fast:
        try:
            for i, image in zip(fast, _decode_jpegs([datas[i] for i in fast], device), strict=True):
                out[i] = image
        except RuntimeError:  # the decoder does not say which file; find it one by one
            for i in fast:
                try:
                    out[i] = _decode_jpegs([datas[i]], device)[0]
                except RuntimeError:
                    retry.append(i)
    bad: dict[int, str] = {}
    batched = set(fast) - set(retry)
    for i in (i for i in range(len(datas)) if i not in batched):
        try:
            out[i] = _decode_pil(datas[i]).to(device, non_blocking=True)
        except _PIL_ERRORS as err:
            bad[i] = f"{type(err).__name__}: {err}"
    if bad and (not skip_bad_images or len(bad) == len(datas)):
        first = min(bad)
        reason = bad[first]
        if skip_bad_images:
            reason = f"all {len(datas)} images of a batch are unreadable (first: {reason})"
        raise UnreadableImageError(_name(images[first], first), reason)
    kept = [i for i in range(len(datas)) if i not in bad]
    return DecodedImages(
        images=[_fit(image, max_side) for image in (out[i] for i in kept) if image is not None],
        kept=kept,
        skipped=[SkippedSample(_name(images[i], i), bad[i]) for i in sorted(bad)],
    )


class DecodedBatch(NamedTuple):
    """A decoded, padded batch, as ``BatchedMultiCrop.forward(images, sizes)`` takes it.

    Attributes:
        images: uint8 ``(b, 3, h, w)``, each image top-left aligned and zero-padded
            (channels-last in memory when the decoders' output is).
        sizes: int64 ``(b, 2)`` valid ``(h, w)`` of each image, on the images' device.
        labels: int64 ``(b,)`` labels of the kept images, on the labels' (host) device.
        skipped: Number of unreadable files dropped.

    Example:
        >>> batch = DecodedBatch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        ...                      torch.tensor([[3, 4]]), torch.tensor([7]), skipped=0)
        >>> batch.sizes.tolist(), batch.labels.tolist()
        ([[3, 4]], [7])
    """

    images: Tensor
    sizes: Tensor
    labels: Tensor
    skipped: int


class BatchedDecoder:
    """Decodes batches of encoded files on a device into padded uint8 batches.

    ``decoder(images, labels)`` is :func:`decode_images` followed by padding as
    :func:`~protohead.augment.image_batch.pad_images` does; the labels of dropped files are
    removed (on the host, where they are). Feed the result to the batched multi-crop augmenter:
    ``crops = aug(batch.images, batch.sizes, generator=generator)``.

    Args:
        device: Where images are decoded, padded and returned.
        max_side: As :func:`decode_images`.
        skip_bad_images: As :func:`decode_images`.

    Raises:
        TypeError, ValueError: On bad settings (as :func:`decode_images`), or from
            ``__call__`` on bad images or labels that are not an ``(b,)`` integer tensor.
        UnreadableImageError: From ``__call__``, as :func:`decode_images`.

    Example:
        >>> def encode(size, fmt):
        ...     buf = io.BytesIO()
        ...     Image.new("RGB", size).save(buf, fmt)
        ...     return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        >>> images = [encode((8, 6), "JPEG"), encode((4, 5), "PNG")]
        >>> batch = BatchedDecoder("cpu")(images, torch.tensor([3, 1]))
        >>> tuple(batch.images.shape), batch.sizes.tolist(), batch.labels.tolist()
        ((2, 3, 6, 8), [[6, 8], [5, 4]], [3, 1])
    """

    def __init__(
        self,
        device: str | torch.device,
        *,
        max_side: int | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.max_side = _check_max_side(max_side)
        self.skip_bad_images = bool(skip_bad_images)

    def __repr__(self) -> str:
        return (
            f"BatchedDecoder(device={str(self.device)!r}, max_side={self.max_side}, "
            f"skip_bad_images={self.skip_bad_images})"
        )

    def __call__(self, images: Sequence[EncodedImage | Tensor], labels: Tensor) -> DecodedBatch:
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
            got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer tensor, got {got}")
        if labels.ndim != 1 or labels.shape[0] != len(images):
            raise ValueError(
                f"labels must have shape ({len(images)},), one per image, got {tuple(labels.shape)}"
            )
        decoded = decode_images(
            images, self.device, max_side=self.max_side, skip_bad_images=self.skip_bad_images
        )
        batch, sizes = _pad(decoded.images)
        if decoded.skipped:
            labels = labels[torch.tensor(decoded.kept, device=labels.device)]
        return DecodedBatch(batch, sizes, labels, len(decoded.skipped))
