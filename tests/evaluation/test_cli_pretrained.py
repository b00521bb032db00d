"""``python -m protohead.evaluation --pretrained NAME``: released weights as the backbone.

Offline: a synthetic file in the released layout sits in a temporary torch.hub cache, where
load_pretrained looks first, and any download attempt fails the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from protohead.backbone import BackboneAdapter
from protohead.evaluation.cache import model_checksum
from protohead.evaluation.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:no recorded SHA-256:UserWarning")

FAST = ["--resize", "32", "--crop", "32", "--seeds", "0", "--grid-points", "3",
        "--refine-steps", "0", "--c-min", "1e-2", "--c-max", "1e2", "--no-progress"]  # fmt: skip
FAKE = ["--dataset", "fake", "--fake-trainval", "24", "--fake-test", "12", "--fake-classes", "3",
        "--fake-image-size", "16"]  # fmt: skip


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise URLError("offline test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    return cache


def test_pretrained_name_evaluates_the_released_weights(tmp_path: Path, hub_cache: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    stock = torchvision.models.resnet50()
    # Perturbed, not redrawn: the BatchNorm statistics must stay valid for a forward pass.
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point()
             else v for k, v in stock.state_dict().items() if not k.startswith("fc.")}  # fmt: skip
    torch.save(state, hub_cache / "trexstar.pth")
    out = tmp_path / "report.json"
    argv = ["--pretrained", "trex_star_resnet50", *FAKE, *FAST, "--no-cache",
            "--output", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "trex_star_resnet50"
    assert report["train_top1"] == pytest.approx(0.802)  # the authors' reported IN1K top-1
    stock.load_state_dict(state, strict=False)
    expected = model_checksum(BackboneAdapter(stock))
    assert report["settings"]["model_checksum"] == expected
    (entry,) = report["datasets"]
    assert entry["status"] == "ok" and entry["num_classes"] == 3


def test_pretrained_usage_errors(
    tmp_path: Path, hub_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.pth"
    shutil.copy(__file__, weights)
    cases = [
        (["--pretrained", "resnet50"], "argument --pretrained: invalid choice: 'resnet50'"),
        (["--pretrained", "trex_resnet50", "--arch", "resnet50"],
         "argument --arch: not allowed with argument --pretrained"),
        (["--pretrained", "trex_resnet50", "--checkpoint", "c.pth"],
         "argument --checkpoint: not allowed with argument --pretrained"),
        (["--pretrained", "trex_resnet50", "--weights", str(weights)],
         "--weights and --small-input-stem go with --arch, not --pretrained"),
        (["--pretrained", "trex_resnet50"],  # nothing cached, no network
         "cannot download the trex_resnet50 weights from https://download.europe.naverlabs.com/"
         "ComputerVision/trex_models/trex.pth"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(SystemExit) as info:
            main([*extra, *FAKE, *FAST, "--no-cache", "--output", str(tmp_path / "r.json")])
        assert info.value.code == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
        assert "Traceback" not in err
    assert not (tmp_path / "r.json").exists()
