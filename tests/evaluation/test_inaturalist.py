"""iNaturalist 2018/2019 on tiny synthetic data in the competition layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from protohead.data.errors import DatasetUnavailableError
from protohead.evaluation import datasets as ds_module
from protohead.evaluation.cli import main
from protohead.evaluation.datasets import DatasetOptions, build_dataset
from protohead.evaluation.inaturalist import inaturalist_pair

# Category ids as in the real files: not contiguous from 0 in the order they are listed.
CATEGORIES = [40, 3, 17]


def identity(image: Any) -> Any:
    return image


def write_split(root: Path, split: str, year: str, per_class: int, first_id: int) -> None:
    """``{split}{year}.json`` and its images; an image's red value encodes its category."""
    images, annotations = [], []
    image_id = first_id
    for category in CATEGORIES:
        for i in range(per_class):
            name = f"train_val{year}/Plants/{category}/{split}_{i}.jpg"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), color=(category * 5, 0, 0)).save(root / name)
            images.append({"id": image_id, "file_name": name, "width": 12, "height": 10})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": category})
            image_id += 1
    annotations.reverse()  # joined by image_id, never by position
    content = {
        "info": {"year": int(year)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"species {c}"} for c in CATEGORIES],
    }
    (root / f"{split}{year}.json").write_text(json.dumps(content))


@pytest.fixture
def inat_root(tmp_path: Path) -> Path:
    root = tmp_path / "inat2019"
    write_split(root, "train", "2019", per_class=4, first_id=100)
    write_split(root, "val", "2019", per_class=2, first_id=900)
    return root


def test_pair_reads_the_competition_layout(inat_root: Path) -> None:
    pair = inaturalist_pair("inat2019", "2019", inat_root, transform=identity)
    assert (len(pair.trainval), len(pair.test), pair.num_classes) == (12, 6, 3)
    # Labels number the category ids in increasing order, in both splits.
    assert pair.trainval.classes == [3, 17, 40] and pair.test.classes == [3, 17, 40]
    for split in (pair.trainval, pair.test):
        for index in range(len(split)):
            image, label = split[index]
            assert image.mode == "RGB" and image.size == (12, 10)
            # JPEG moves a flat colour by a unit or two; the categories' reds are 15, 85, 200.
            assert abs([3, 17, 40][label] * 5 - image.getpixel((5, 5))[0]) <= 4
    assert pair.trainval.targets == [2] * 4 + [0] * 4 + [1] * 4  # the file's image order
    assert pair.config["root"] == str(inat_root.resolve())
    assert set(pair.config["files"]) == {"trainval", "test"}


def test_fingerprint_follows_images_and_annotations(inat_root: Path) -> None:
    before = inaturalist_pair("inat2019", "2019", inat_root, transform=identity).config
    image = inat_root / "train_val2019/Plants/3/val_0.jpg"
    Image.new("RGB", (12, 10), color=(1, 2, 3)).save(image)
    os.utime(image, ns=(1, 1))
    after = inaturalist_pair("inat2019", "2019", inat_root, transform=identity).config
    assert after["files"]["test"] != before["files"]["test"]
    assert after["files"]["trainval"] == before["files"]["trainval"]
    content = json.loads((inat_root / "val2019.json").read_text())
    content["annotations"][0]["category_id"] = 17  # a relabelled image
    content["annotations"][1]["category_id"] = 40
    (inat_root / "val2019.json").write_text(json.dumps(content))
    relabelled = inaturalist_pair("inat2019", "2019", inat_root, transform=identity).config
    assert relabelled["files"]["test"] != after["files"]["test"]
    assert relabelled["annotations"] != after["annotations"]


def test_malformed_and_missing_files(inat_root: Path) -> None:
    val = inat_root / "val2019.json"
    content = json.loads(val.read_text())
    cases: list[tuple[Any, type[Exception], str]] = [
        ({**content, "annotations": content["annotations"][1:]}, ValueError,
         "every image needs exactly one annotation, got 6 images, 5 annotations"),
        ({**content, "annotations": [*content["annotations"], content["annotations"][0]]},
         ValueError, "has several annotations"),
        ({**content, "annotations": [{**a, "category_id": 99} for a in content["annotations"]]},
         ValueError, r"categories \[99\] are not in the class numbering"),
        ({**content, "images": "x"}, ValueError, "must hold a list 'images'"),
        ({**content, "images": [{"id": 1}]}, ValueError, r"needs \['id', 'file_name'\]"),
    ]  # fmt: skip
    for broken, error, message in cases:
        val.write_text(json.dumps(broken))
        with pytest.raises(error, match=message):
            inaturalist_pair("inat2019", "2019", inat_root, transform=identity)
    val.write_text(json.dumps(content)[:50])  # a truncated download
    with pytest.raises(ValueError, match="not valid JSON .*a truncated download"):
        inaturalist_pair("inat2019", "2019", inat_root, transform=identity)
    val.write_text(json.dumps(content))
    (inat_root / "train_val2019/Plants/17/val_1.jpg").unlink()
    with pytest.raises(
        DatasetUnavailableError, match=r"inat2019: 1 of 6 images named in .*val2019"
    ):
        inaturalist_pair("inat2019", "2019", inat_root, transform=identity)
    val.unlink()
    with pytest.raises(DatasetUnavailableError, match="val2019.json' does not exist"):
        inaturalist_pair("inat2019", "2019", inat_root, transform=identity)
    with pytest.raises(ValueError, match="year must be '2018' or '2019', got '2021'"):
        inaturalist_pair("inat2021", "2021", inat_root, transform=identity)


def test_registered_dataset_checks_the_paper_sizes(
    inat_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = DatasetOptions(root=str(inat_root.parent))  # default layout: <root>/inat2019
    with pytest.raises(
        DatasetUnavailableError,
        match="inat2019: expected 265213 trainval / 3030 test images, found 12 / 6",
    ):
        build_dataset("inat2019", identity, options)
    with pytest.raises(DatasetUnavailableError, match=r"inat2018: .*train2018.json' does not"):
        build_dataset("inat2018", identity, options)
    monkeypatch.setitem(ds_module.EXPECTED_COUNTS, "inat2019", (12, 6))
    with pytest.raises(DatasetUnavailableError, match="expected 1010 classes .* found 3"):
        build_dataset("inat2019", identity, options)
    monkeypatch.setitem(ds_module._NUM_CLASSES, "inat2019", 3)
    elsewhere = DatasetOptions(root="unused", inat2019_root=str(inat_root))
    for opts in (options, elsewhere):
        data = build_dataset("inat2019", identity, opts)
        assert (len(data.trainval), len(data.test), data.num_classes) == (12, 6, 3)
        assert data.val_per_class is None  # the search holds out 20 % of each class


def test_cli_runs_inaturalist_like_the_other_datasets(
    inat_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ds_module.EXPECTED_COUNTS, "inat2019", (12, 6))
    monkeypatch.setitem(ds_module._NUM_CLASSES, "inat2019", 3)
    out = tmp_path / "r.json"
    argv = ["--arch", "resnet18", "--dataset", "inaturalist", "--inat2019-root", str(inat_root),
            "--data-root", str(tmp_path), "--crop", "16", "--seeds", "0", "--grid-points", "3",
            "--refine-steps", "0", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
            "--output", str(out), "-q"]  # fmt: skip
    assert main(argv) == 3  # 2018 is missing here
    entries = {d["name"]: d for d in json.loads(out.read_text())["datasets"]}
    assert entries["inat2018"]["status"] == "missing"
    assert entries["inat2019"]["status"] == "ok"
    assert (entries["inat2019"]["num_trainval"], entries["inat2019"]["num_classes"]) == (12, 3)
    assert entries["inat2019"]["accuracy"] == pytest.approx(1.0)  # colour encodes the class
    assert len(list((tmp_path / "cache").glob("inat2019-*.pt"))) == 2
