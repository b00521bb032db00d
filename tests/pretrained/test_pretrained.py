"""Released weights by name (protohead.pretrained): registry, file resolution, layout checks.

Everything runs offline: the released files are replaced by a synthetic state_dict in the
released layout (a torchvision resnet50 state_dict without ``fc``), passed with ``source=`` or
placed in a temporary ``torch.hub`` cache, and the download function is replaced.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

import protohead
from protohead import pretrained
from protohead.pretrained import (
    PRETRAINED,
    WeightsUnavailableError,
    file_sha256,
    files,
    list_pretrained,
    load_pretrained,
    pretrained_file,
    pretrained_info,
    released_state_dict,
)
from protohead.pretrained import __main__ as cli

NAMES = ["trex_resnet50", "trex_star_resnet50", "trex_resnet50_repro", "trex_star_resnet50_repro"]
SERVER = "https://download.europe.naverlabs.com/ComputerVision/trex_models/"
# No hash is recorded yet; the warning about it is tested once, below.
pytestmark = pytest.mark.filterwarnings("ignore:no recorded SHA-256:UserWarning")


@pytest.fixture(scope="module")
def released() -> dict[str, torch.Tensor]:
    """A resnet50 state_dict in the released layout whose every entry differs from a fresh init."""
    generator = torch.Generator().manual_seed(7)
    state = torchvision.models.resnet50().state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=generator)
        else:
            out[key] = torch.full_like(value, 7)
    return out


@pytest.fixture(scope="module")
def released_file(
    released: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("released") / "trex.pth"
    torch.save(released, path)
    return path


@pytest.fixture(scope="module")
def stock() -> torch.nn.Module:
    return torchvision.models.resnet50()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The missing-hash warning is given once per process; every test starts with none given.
    monkeypatch.setattr(files, "_WARNED_NO_SHA256", set())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty torch.hub cache and a download that fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[str] = []

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _assert_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) - set(state) == {"fc.weight", "fc.bias"}
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_registry_names_resolve() -> None:
    assert list_pretrained() == NAMES == list(PRETRAINED)
    assert protohead.list_pretrained is list_pretrained
    assert protohead.load_pretrained is load_pretrained
    for name in NAMES:
        info = pretrained_info(name)
        assert info.name == name and info.arch == "resnet50"
        assert info.url.startswith(SERVER) and info.url.endswith(".pth")
        assert info.license == pretrained.WEIGHTS_LICENSE == "CC BY-NC-SA 4.0"
        assert info.preset in protohead.PRESETS
        assert 70 < info.imagenet_top1 < 85 and 0.5 < info.transfer_log_odds < 1.5
        assert info.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", info.sha256)
        assert (info.full_checkpoint_url is not None) == name.endswith("_repro")
    # The reported numbers of the authors' Model Zoo.
    table = {n: (e.imagenet_top1, e.transfer_log_odds) for n, e in PRETRAINED.items()}
    assert table == {
        "trex_resnet50": (78.0, 1.1704),
        "trex_star_resnet50": (80.2, 0.8829),
        "trex_resnet50_repro": (77.9, 1.1664),
        "trex_star_resnet50_repro": (80.2, 0.8800),
    }


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(
        ValueError, match=r"name must be one of \['trex_resnet50', .*got 'resnet50'"
    ):
        load_pretrained("resnet50")
    with pytest.raises(TypeError, match="name must be a str, got int"):
        pretrained_info(3)  # type: ignore[arg-type]


def test_file_url_source_gives_a_resnet50_with_the_file_weights(
    released: dict[str, torch.Tensor], released_file: Path
) -> None:
    with pytest.warns(UserWarning, match=re.escape(
        "no recorded SHA-256 for trex_resnet50; run "
        "`python -m protohead.pretrained --print-sha256 trex_resnet50` to compute it"
    )):  # fmt: skip
        model = load_pretrained("trex_resnet50", source=released_file.as_uri(), progress=False)
    assert type(model) is torchvision.models.ResNet
    assert model.fc.weight.shape == (1000, 2048)
    _assert_holds(model, released)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per name: not again
        again = load_pretrained("trex_resnet50", source=str(released_file))
    _assert_holds(again, released)


def test_wrapped_and_ddp_prefixed_files_load(
    released: dict[str, torch.Tensor], tmp_path: Path, stock: torch.nn.Module
) -> None:
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {f"module.{k}": v for k, v in released.items()}, "epoch": 3}, path)
        state = released_state_dict(path, stock, "trex_resnet50")
        assert state.keys() == released.keys()
        assert all(torch.equal(state[k], released[k]) for k in released)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: {
                **{k: v for k, v in s.items() if k != "layer4.2.bn3.weight"},
                "extra.weight": torch.zeros(1),
            },
            r"missing keys \['layer4.2.bn3.weight'\], unexpected keys \['extra.weight'\]",
        ),
        (
            lambda s: {**s, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
            r"classifier keys \['fc.bias', 'fc.weight'\]",
        ),
        (
            lambda s: {**s, "conv1.weight": torch.zeros(64, 3, 3, 3)},
            re.escape("shape mismatches ['conv1.weight (64, 3, 3, 3) (model: (64, 3, 7, 7))']"),
        ),
        (
            lambda s: {f"module.model.encoder.{k}": v for k, v in s.items()},
            r"missing keys \['bn1.bias', .*\] and \d+ more, .*full training checkpoint",
        ),
    ],
    ids=["missing-and-unexpected", "classifier-present", "shape", "full-checkpoint"],
)
def test_wrong_layout_names_the_keys(
    released: dict[str, torch.Tensor], tmp_path: Path, stock: torch.nn.Module, edit, message
) -> None:
    path = tmp_path / "bad.pth"
    torch.save(edit(released), path)
    with pytest.raises(ValueError, match=f"released layout.*{message}"):
        released_state_dict(path, stock, "trex_resnet50")


def test_wrong_layout_raises_from_load_pretrained(
    released: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in released.items() if not k.startswith("layer4.")}, path)
    with pytest.raises(ValueError, match=r"missing keys \['layer4.0.bn1.bias', "):
        load_pretrained("trex_star_resnet50", source=path)


def test_files_that_are_not_state_dicts_are_refused(tmp_path: Path, stock: torch.nn.Module) -> None:
    garbage = tmp_path / "page.html"
    garbage.write_text("<html>not found</html>")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        released_state_dict(garbage, stock, "trex_resnet50")
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match=r"must hold a state_dict \(str -> Tensor\), got list"):
        released_state_dict(listing, stock, "trex_resnet50")


def test_sha256_is_checked_when_recorded(
    released: dict[str, torch.Tensor], released_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = PRETRAINED["trex_resnet50"]
    monkeypatch.setitem(PRETRAINED, "trex_resnet50", dataclasses.replace(info, sha256="0" * 64))
    digest = file_sha256(released_file)
    expected = f"must be {'0' * 64} \\(recorded for trex_resnet50\\), got {digest}"
    with pytest.raises(ValueError, match=expected):
        load_pretrained("trex_resnet50", source=released_file)
    monkeypatch.setitem(PRETRAINED, "trex_resnet50", dataclasses.replace(info, sha256=digest))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recorded hash: no warning
        _assert_holds(load_pretrained("trex_resnet50", source=released_file), released)


def test_offline_without_cache_names_the_url_and_source(no_network: Path) -> None:
    url = SERVER + "trexstar.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        load_pretrained("trex_star_resnet50", progress=False)
    message = str(info.value)
    assert url in message and "Name or service not known" in message
    assert (
        "source='/path/to/trexstar.pth'" in message and str(no_network / "trexstar.pth") in message
    )
    assert isinstance(info.value, FileNotFoundError)
    assert not no_network.exists() or not any(no_network.iterdir())


def test_cached_file_is_used_without_download(
    released: dict[str, torch.Tensor], released_file: Path, no_network: Path
) -> None:
    no_network.mkdir(parents=True)
    shutil.copy(released_file, no_network / "trex_2.pth")
    _assert_holds(load_pretrained("trex_resnet50_repro"), released)


@pytest.fixture
def local_server(
    released_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str, str | None, bool]]:
    """torch.hub's real download, served from the synthetic file; records the requests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    real_download = torch.hub.download_url_to_file
    calls: list[tuple[str, str, str | None, bool]] = []

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True):
        calls.append((url, dst, hash_prefix, progress))
        real_download(released_file.as_uri(), dst, hash_prefix=hash_prefix, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def test_download_lands_in_the_hub_cache(
    released: dict[str, torch.Tensor],
    local_server: list[tuple[str, str, str | None, bool]],
    tmp_path: Path,
) -> None:
    calls = local_server
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    _assert_holds(load_pretrained("trex_star_resnet50_repro", progress=False), released)
    assert calls == [(SERVER + "trexstar_2.pth", str(cache / "trexstar_2.pth"), None, False)]
    load_pretrained("trex_star_resnet50_repro")  # cached now
    assert len(calls) == 1
    mirror = "https://mirror.example.org/weights/trex.pth"
    assert pretrained_file("trex_resnet50", source=mirror) == cache / "trex.pth"
    assert calls[-1][0] == mirror
    full = pretrained_file("trex_resnet50_repro", full_checkpoint=True, verify=False)
    assert full == cache / "trex_2_checkpoint_full.pth"
    assert calls[-1][0] == SERVER + "trex_2_checkpoint_full.pth"
    assert sorted(p.name for p in cache.iterdir()) == [
        "trex.pth", "trex_2_checkpoint_full.pth", "trexstar_2.pth"
    ]  # fmt: skip


def test_download_with_the_wrong_hash_is_not_cached(
    local_server: list[tuple[str, str, str | None, bool]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = PRETRAINED["trex_resnet50"]
    monkeypatch.setitem(PRETRAINED, "trex_resnet50", dataclasses.replace(info, sha256="0" * 64))
    with pytest.raises(ValueError, match=f"{info.url} must have the SHA-256 {'0' * 64}"):
        load_pretrained("trex_resnet50", progress=False)
    assert local_server[0][2] == "0" * 64
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source must be an existing file"):
        load_pretrained("trex_resnet50", source=tmp_path / "missing.pth")
    with pytest.raises(
        ValueError, match=r"source must be a path or a file://, http:// or https://"
    ):
        load_pretrained("trex_resnet50", source="ftp://example.org/trex.pth")
    with pytest.raises(ValueError, match="source must be a local file:// URL"):
        load_pretrained("trex_resnet50", source="file://otherhost/trex.pth")
    with pytest.raises(TypeError, match="source must be a path or a URL string, got int"):
        load_pretrained("trex_resnet50", source=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress must be a bool, got str"):
        load_pretrained("trex_resnet50", progress="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"full checkpoint \(one of \['trex_resnet50_repro', "):
        pretrained_file("trex_resnet50", full_checkpoint=True)


def test_cli_prints_sha256_and_lists(
    released_file: Path, capsys: pytest.CaptureFixture[str], no_network: Path
) -> None:
    assert cli.main(["--print-sha256", str(released_file)]) == 0
    assert capsys.readouterr().out == f"{file_sha256(released_file)}  {released_file}\n"
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for entry in PRETRAINED.values():
        assert entry.name in out and entry.url in out and f"{entry.transfer_log_odds:.4f}" in out
    assert cli.main(["--print-sha256", "trex_resnet50", "--no-progress"]) == 1
    assert "error: cannot download the trex_resnet50 weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--print-sha256", "no_such_model"])
    assert exit_info.value.code == 2
    assert "--print-sha256 must be one of ['trex_resnet50'" in capsys.readouterr().err


def test_module_runs_as_a_command() -> None:
    run = subprocess.run(
        [sys.executable, "-W", "error", "-m", "protohead.pretrained", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and "trex_star_resnet50_repro" in run.stdout


def test_guide_table_and_warning_match_the_registry(
    released_file: Path, recwarn: pytest.WarningsRecorder
) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "pretrained.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in guide.splitlines() if line.startswith("| `")]  # fmt: skip
    assert [row[0].strip("`") for row in rows] == NAMES
    for row in rows:
        info = pretrained_info(row[0].strip("`"))
        full = "yes" if info.full_checkpoint_url else "no"
        expected = [info.title, f"{info.imagenet_top1:.1f}", f"{info.transfer_log_odds:.4f}", full]
        assert row[1:] == expected, row
    warnings.simplefilter("always")
    pretrained_file("trex_resnet50", source=released_file)
    (warning,) = [w for w in recwarn if "SHA-256" in str(w.message)]
    assert f"```text\nUserWarning: {warning.message}\n```" in guide
