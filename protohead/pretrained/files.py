"""Finding the file of released weights: cache, download, local override, SHA-256 check.

Downloads go to ``torch.hub``'s checkpoint cache (``$TORCH_HOME/hub/checkpoints``, by
default ``~/.cache/torch/hub/checkpoints``) under the file name of the URL, the place
``torch.hub.load_state_dict_from_url`` uses too, so a file fetched by either is found by both.
A cached file is never downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch

from protohead.pretrained.registry import PRETRAINED, pretrained_info

__all__ = ["WeightsUnavailableError", "file_sha256", "hub_cache_dir", "pretrained_file"]

Source = str | os.PathLike[str]

# Files already warned about: the missing-hash warning is given once per file and process.
_WARNED_NO_SHA256: set[str] = set()


class WeightsUnavailableError(FileNotFoundError):
    """The weights are neither in the cache nor downloadable (e.g. no network).

    A :class:`FileNotFoundError`, so callers that handle a missing weights file handle this too.

    Example:
        >>> issubclass(WeightsUnavailableError, FileNotFoundError)
        True
    """


def file_sha256(path: Source) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks.

    Raises:
        FileNotFoundError: If ``path`` is not a file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "empty.bin"
        >>> _ = path.write_bytes(b"")
        >>> file_sha256(path)[:16]
        'e3b0c44298fc1c14'
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path must be an existing file, got {os.fspath(path)!r}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_cache_dir() -> Path:
    """Where downloads are cached: ``torch.hub.get_dir()/checkpoints`` (follows ``TORCH_HOME``).

    Example:
        >>> hub_cache_dir().name
        'checkpoints'
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_file(
    name: str,
    *,
    full_checkpoint: bool = False,
    source: Source | None = None,
    progress: bool = True,
    verify: bool = True,
) -> Path:
    """Local path of the weights of ``name``, downloaded into the cache if needed.

    Args:
        name: A registry name, see :func:`~protohead.list_pretrained`.
        full_checkpoint: The full training checkpoint instead of the ResNet-50 weights.
        source: Use this file instead of the registry's URL: a local path, a ``file://`` URL
            or an ``http(s)://`` URL (downloaded into the cache). For machines without network:
            download the file elsewhere and pass its path.
        progress: Show a progress bar while downloading.
        verify: Check the file's SHA-256 against the registry. When none is recorded, a
            warning (once per name) says how to compute it.

    Returns:
        Path of the (verified) file.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``name`` is unknown, ``source`` has an unsupported scheme, the model
            has no full checkpoint, or the SHA-256 differs from the recorded one.
        FileNotFoundError: If a local ``source`` does not exist.
        WeightsUnavailableError: If the download fails and no copy is cached.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "trex.pth"
        >>> torch.save({}, path)
        >>> pretrained_file("trex_resnet50", source=path, verify=False) == path
        True
    """
    info = pretrained_info(name)
    for arg, value in (("full_checkpoint", full_checkpoint), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be a bool, got {type(value).__name__}")
    url, sha256 = info.url, info.sha256
    if full_checkpoint:
        if info.full_checkpoint_url is None:
            with_full = [n for n, e in PRETRAINED.items() if e.full_checkpoint_url is not None]
            raise ValueError(
                f"name must have a released full checkpoint (one of {with_full}) when "
                f"full_checkpoint=True, got {name!r}"
            )
        url, sha256 = info.full_checkpoint_url, info.full_checkpoint_sha256
    path = _resolve(name, url if source is None else source, sha256, progress)
    if verify:
        check_sha256(name, path, sha256, full_checkpoint)
    return path


def check_sha256(
    name: str, path: Path, expected: str | None, full_checkpoint: bool = False
) -> None:
    """Compare ``path``'s SHA-256 with the recorded one; warn once when none is recorded."""
    if expected is None:
        what, flag = (
            (f"{name} (full checkpoint)", " --full-checkpoint") if full_checkpoint else (name, "")
        )
        if what not in _WARNED_NO_SHA256:
            _WARNED_NO_SHA256.add(what)
            warnings.warn(
                f"no recorded SHA-256 for {what}; run "
                f"`python -m protohead.pretrained --print-sha256 {name}{flag}` to compute it",
                UserWarning,
                stacklevel=3,
            )
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ValueError(
            f"the SHA-256 of {str(path)!r} must be {expected} (recorded for {name}), got {actual}: "
            "the file is damaged or not the released one; delete it to download it again"
        )


def _resolve(name: str, source: Source, sha256: str | None, progress: bool) -> Path:
    """A local file for ``source``: a path, a ``file://`` URL, or a downloaded http(s) URL."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a URL string, got {type(source).__name__}")
    text = os.fspath(source)
    scheme = urlparse(text).scheme if "://" in text else ""  # not Windows drives ("C:\\")
    if scheme in ("http", "https"):
        return _download(name, text, sha256, progress)
    if scheme == "file":
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"source must be a local file:// URL, got {text!r}")
        path = Path(url2pathname(parsed.path))
    elif scheme:
        raise ValueError(
            f"source must be a path or a file://, http:// or https:// URL, got {text!r}"
        )
    else:
        path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"source must be an existing file, got {text!r}")
    return path


def _download(name: str, url: str, sha256: str | None, progress: bool) -> Path:
    file_name = Path(urlparse(url).path).name
    if not file_name:
        raise ValueError(f"source URL must end with a file name, got {url!r}")
    target = hub_cache_dir() / file_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub writes to a temporary file and renames it when complete (and, with a
        # hash, only when it matches), so the cache never holds a partial download.
        expected = sha256.lower() if sha256 is not None else None  # torch compares lower case
        torch.hub.download_url_to_file(url, str(target), hash_prefix=expected, progress=progress)
    except (OSError, http.client.HTTPException) as err:
        raise WeightsUnavailableError(
            f"cannot download the {name} weights from {url} ({err}) and no copy is cached at "
            f"{str(target)!r}; download the file elsewhere and pass it with "
            f"source='/path/to/{file_name}' (a path or file:// URL), or copy it into the cache"
        ) from err
    except RuntimeError as err:  # torch.hub's hash check
        raise ValueError(
            f"the download of {url} must have the SHA-256 {sha256} recorded for {name}: {err}"
        ) from err
    return target
