"""Data loaders on their real on-disk formats: shared data where present, written fixtures otherwise."""

import io
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ceag_cooper.data import (
    load_adult,
    load_cifar100,
    load_fairface,
    load_omniglot,
    load_utkface,
    resolve_data_dir,
    utkface_split,
)
from ceag_cooper.data.utkface import parse_name

DATA = resolve_data_dir()
UTKFACE = DATA / "utkface" / "UTKFace.tar.gz"
needs_utkface = pytest.mark.skipif(not UTKFACE.is_file(), reason=f"UTKFace archive not found at {UTKFACE}")
needs_adult = pytest.mark.skipif(not (DATA / "adult").is_dir(), reason=f"Adult CSVs not found under {DATA}")
needs_omniglot = pytest.mark.skipif(not (DATA / "omniglot").is_dir(), reason=f"Omniglot zips not found under {DATA}")


def png_bytes(array):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG" if array.ndim == 2 else "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def utkface_names():
    with tarfile.open(UTKFACE, "r:gz") as archive:
        return sorted(Path(m.name).name for m in archive if m.isfile())


@needs_utkface
def test_utkface_paper_split_sizes_and_test_race_counts(utkface_names):
    assert len(utkface_names) == 23708
    labelled = [n for n in utkface_names if parse_name(n) is not None]
    assert len(labelled) == 23705  # the 3 known files without a race field are skipped
    train, test = utkface_split(labelled)
    assert (len(train), len(test)) == (18964, 4741)
    races = Counter(parse_name(labelled[i])[2] for i in test)
    assert [races[r] for r in range(5)] == [1991, 914, 686, 825, 325]


@needs_utkface
def test_utkface_loads_real_images_from_an_extracted_folder(tmp_path, utkface_names):
    folder = tmp_path / "utkface" / "UTKFace"
    folder.mkdir(parents=True)
    wanted = set(utkface_names[:40:2]) | {"39_1_20170116174525125.jpg.chip.jpg"}  # one without a race
    with tarfile.open(UTKFACE, "r:gz") as archive:
        for member in archive:
            if Path(member.name).name in wanted:
                (folder / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    (folder / "30_0_1_20170101000000000.jpg.chip.jpg").write_bytes(b"not a jpeg")  # unreadable
    with pytest.warns(UserWarning, match=r"skipped \d+ file\(s\) whose names lack labels .* and 1 unreadable"):
        data = load_utkface(tmp_path, split="all", target="gender", protected=("race", "age_bucket"),
                            size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                            expected_files=None)  # fmt: skip
    names = sorted(n for n in wanted if parse_name(n) is not None)
    assert len(data) == len(names)
    expected = torch.tensor([parse_name(n)[1] for n in names])
    assert torch.equal(data.targets, expected)
    assert data.inputs.shape == (len(names), 3, 16, 16)
    assert data.attributes[:, 0].tolist() == [parse_name(n)[2] for n in names]
    ages = np.array([parse_name(n)[0] for n in names])
    assert data.attributes[:, 1].tolist() == np.digitize(ages, [10, 15, 20, 25, 30, 40, 50, 60]).tolist()
    assert data.group_spec(mode="intersectional").num_groups == 45
    # The second load comes from the cache (no decoding): same tensors.
    with pytest.warns(UserWarning, match="skipped"):
        again = load_utkface(tmp_path, split="all", target="gender", protected=("race", "age_bucket"),
                             size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                             expected_files=None)  # fmt: skip
    assert torch.equal(again.inputs, data.inputs)
    # A cache written by another version (or truncated) is rebuilt, with a warning, not trusted.
    (cache,) = (tmp_path / "cache").glob("utkface-*-16px.pt")
    torch.save({"format": -1}, cache)
    with pytest.warns(UserWarning, match="written by another version"):
        rebuilt = load_utkface(tmp_path, split="all", target="gender", protected=("race", "age_bucket"),
                               size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                               expected_files=None)  # fmt: skip
    assert torch.equal(rebuilt.inputs, data.inputs)
    cache.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        load_utkface(tmp_path, split="all", target="gender", protected=("race",), size=16,
                     cache_dir=tmp_path / "cache", workers=1, progress=False, expected_files=None)  # fmt: skip
    # Without expected_files=None the same partial folder is refused, not loaded as a fraction.
    with pytest.raises(ValueError, match=r"holds 22 image files, the official UTKFace release 23,708"):
        load_utkface(tmp_path, split="all", protected=("gender",), size=16, cache_dir=tmp_path / "cache",
                     workers=1, progress=False)  # fmt: skip


@pytest.mark.filterwarnings("ignore:the target 'race' is also a protected attribute")
def test_utkface_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"utkface/UTKFace.tar.gz .* CEAG_DATA_DIR"):
        load_utkface(tmp_path)
    with pytest.raises(ValueError, match="unknown UTKFace attribute 'ethnicity'"):
        load_utkface(tmp_path, protected=("ethnicity",))
    with pytest.raises(ValueError, match="split"):
        load_utkface(tmp_path, split="validation")
    with pytest.warns(UserWarning, match="also a protected attribute"), pytest.raises(FileNotFoundError):
        load_utkface(tmp_path, target="race", protected=("race",))
    broken = tmp_path / "broken" / "utkface"
    broken.mkdir(parents=True)
    (broken / "UTKFace.tar.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ValueError, match=r"not a complete, readable \.tar\.gz"):
        load_utkface(tmp_path / "broken", cache_dir=tmp_path / "cache", progress=False)


@needs_adult
def test_adult_real_files():
    train, test = load_adult(protected=("sex", "race"))
    assert (len(train), len(test)) == (32561, 16281)
    assert train.inputs.shape[1] == test.inputs.shape[1]
    assert abs(train.targets.float().mean().item() - 0.2408) < 0.001  # 7,841 of 32,561 earn > 50K
    assert abs(test.targets.float().mean().item() - 0.2362) < 0.001  # labels with a trailing '.' parsed
    numeric = train.inputs[:, :6]
    torch.testing.assert_close(numeric.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    assert Counter(train.attributes[:, 0].tolist()) == {0: 21790, 1: 10771}
    assert train.group_spec(mode="intersectional").num_groups == 10


@needs_omniglot
def test_omniglot_real_zips_are_deduplicated_and_split_by_drawer():
    train, test = load_omniglot(size=20)
    assert len(train) + len(test) == 4840
    assert len(test) == 242 * 5
    assert train.num_classes == 242
    assert torch.equal(train.attributes[:, 0], train.targets)
    _, test_alphabets = load_omniglot(size=20, groups="alphabet")
    assert test_alphabets.attribute_sizes == (8,)


def test_cifar100_python_format_fixture(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}  # fmt: skip
    (folder / "meta").write_bytes(pickle.dumps(meta))
    for split, n in (("train", 12), ("test", 4)):
        fine = rng.integers(0, 100, n).tolist()
        raw = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
               b"coarse_labels": [f // 5 for f in fine], b"filenames": [b"x.png"] * n}  # fmt: skip
        (folder / split).write_bytes(pickle.dumps(raw))
    train, test = load_cifar100(tmp_path)
    assert train.inputs.shape == (12, 3, 32, 32)
    assert len(test) == 4
    assert torch.equal(train.attributes[:, 0], train.targets // 5)
    assert train.group_spec().num_groups == 20
    assert load_cifar100(tmp_path, groups="fine")[0].group_spec().num_groups == 100
    # The first pixel's red channel is byte 0 of the row (channel-major layout).
    first = pickle.loads((folder / "train").read_bytes())[b"data"][0]
    assert train.inputs[0, 0, 0, 0].item() == pytest.approx((first[0] / 255 - 0.507) / 0.267, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar100(tmp_path / "nowhere")
    # Regression (issue #16 item 6): a crafted `meta` executed code through pickle.load.
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": Exploit()}))
    with pytest.raises(ValueError, match=r"global pathlib.*\.write_text is not allowed .* refusing to load it"):
        load_cifar100(tmp_path)
    assert not marker.exists()


def test_fairface_csv_and_image_folder_fixture(tmp_path):
    folder = tmp_path / "fairface"
    (folder / "val").mkdir(parents=True)
    rows = ["file,age,gender,race,service_test"]
    rng = np.random.default_rng(0)
    labels = [("20-29", "Male", "White"), ("3-9", "Female", "East Asian"), ("more than 70", "Female", "Indian")]
    for i, (age, gender, race) in enumerate(labels, start=1):
        (folder / "val" / f"{i}.jpg").write_bytes(png_bytes(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
        rows.append(f"val/{i}.jpg,{age},{gender},{race},True")
    rows.append("val/9.jpg,20-29,Male,Martian,False")  # unknown label
    rows.append("val/10.jpg,20-29,Male,White,False")  # missing image
    (folder / "fairface_label_val.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="skipped 2 row"):
        data = load_fairface(tmp_path, split="val", target="gender", protected=("race", "age"), size=8)
    assert data.targets.tolist() == [0, 1, 1]
    assert data.attributes.tolist() == [[0, 3], [3, 1], [5, 8]]
    assert data.inputs.shape == (3, 3, 8, 8)


def _utkface_archive(path, count, *, seed=0):
    """A .tar.gz in UTKFace's layout with ``count`` random, labelled JPEGs (incompressible pixels)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for i in range(count):
            data = png_bytes(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
            info = tarfile.TarInfo(f"UTKFace/{20 + i % 50}_{i % 2}_{i % 5}_2017010100000{i:04d}.jpg.chip.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_utkface_refuses_a_damaged_archive_instead_of_loading_part_of_it(tmp_path):
    """Regression (issue #16 item 1): garbage in the middle used to load about half the images."""
    archive = tmp_path / "data" / "utkface" / "UTKFace.tar.gz"
    _utkface_archive(archive, 60)
    whole = load_utkface(tmp_path / "data", split="all", cache_dir=tmp_path / "c1", workers=1, progress=False,
                         expected_files=None)  # fmt: skip
    assert len(whole) == 60
    assert len(load_utkface(tmp_path / "data", split="all", cache_dir=tmp_path / "c1", expected_files=60)) == 60
    with pytest.raises(ValueError, match="holds 60 image files, the official UTKFace release 61"):
        load_utkface(tmp_path / "data", split="all", cache_dir=tmp_path / "c1", expected_files=61)
    folder = tmp_path / "folder" / "utkface" / "UTKFace"
    folder.mkdir(parents=True)
    (folder / "30_0_1_20170101000000000.jpg.chip.jpg").write_bytes(b"not a jpeg")
    (folder / "31_0_1_20170101000000001.jpg.chip.jpg").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"1 image\(s\) do not decode"):
        load_utkface(tmp_path / "folder", split="all", cache_dir=tmp_path / "c3", workers=1, progress=False,
                     expected_files=2)  # fmt: skip
    raw = bytearray(archive.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    archive.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"not a complete, readable \.tar\.gz archive .* download it again"):
        load_utkface(tmp_path / "data", split="all", cache_dir=tmp_path / "c2", workers=1, progress=False,
                     expected_files=None)  # fmt: skip


def test_utkface_image_with_an_absurd_header_is_unreadable_not_a_crash(tmp_path):
    """Regression: a JPEG whose header claims 65000 x 65000 pixels raised PIL's DecompressionBombError."""
    from ceag_cooper.data.utkface import _decode

    good = png_bytes(np.zeros((24, 24, 3), dtype=np.uint8))
    marker = good.index(b"\xff\xc0")  # SOF0: length (2 bytes), precision (1), height (2), width (2)
    bomb = good[: marker + 5] + (65000).to_bytes(2, "big") * 2 + good[marker + 9 :]
    decoded = _decode([good, bomb], 8)
    assert decoded[0].shape == (8, 8, 3)
    assert decoded[1] is None


def _omniglot_zips(folder, characters):
    """The two zips' layout with ``characters`` characters of 20 drawers each, alternating between the zips."""
    folder.mkdir(parents=True, exist_ok=True)
    import zipfile

    blank = png_bytes(np.zeros((10, 10), dtype=np.uint8))
    for index, name in enumerate(("images_background_small1.zip", "images_background_small2.zip")):
        with zipfile.ZipFile(folder / name, "w") as archive:
            for c in range(characters):
                if c % 2 == index:
                    continue
                for drawer in range(1, 21):
                    archive.writestr(f"images_background_small{index + 1}/alpha/char{c:02d}/x_{drawer:02d}.png", blank)


def test_omniglot_refuses_a_missing_zip_or_missing_characters(tmp_path):
    """Regression (issue #16 item 1): one zip missing silently gave 136 of 242 characters."""
    folder = tmp_path / "omniglot"
    _omniglot_zips(folder, 6)
    train, test = load_omniglot(tmp_path, size=8, expected_images=120)
    assert len(train) + len(test) == 120
    assert train.num_classes == 6
    with pytest.raises(ValueError, match=r"120 distinct drawings of 6 characters, the official .* 4,840 of 242"):
        load_omniglot(tmp_path, size=8)
    (folder / "images_background_small2.zip").unlink()
    with pytest.raises(FileNotFoundError, match=r"images_background_small2\.zip missing"):
        load_omniglot(tmp_path, size=8, expected_images=None)
    _omniglot_zips(folder, 6)
    raw = bytearray((folder / "images_background_small1.zip").read_bytes())
    raw[200:260] = b"\x00" * 60  # inside the first member's data: its CRC no longer matches
    (folder / "images_background_small1.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a complete, readable zip"):
        load_omniglot(tmp_path, size=8, expected_images=None)


@needs_adult
def test_adult_many_groups_from_the_real_files():
    """Issue #15: sex x age bucket x occupation, oracle: the CSV read by hand with the same rules."""
    import collections

    from ceag_cooper.data import ADULT_ATTRIBUTES
    from ceag_cooper.data.adult import AGE_EDGES, MERGED_OCCUPATIONS

    train, _ = load_adult(protected=("sex", "age_bucket", "occupation"))
    spec = train.group_spec()
    assert spec.num_groups == 2 * 6 * 13
    counted = collections.Counter()
    for line in (DATA / "adult" / "adult.data").read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 15:
            bucket = sum(int(fields[0]) >= edge for edge in AGE_EDGES)
            occupation = MERGED_OCCUPATIONS.get(fields[6], fields[6])
            counted[(fields[9], bucket, occupation)] += 1
    ids = spec.group_ids(train.attributes)
    ours = torch.bincount(ids, minlength=spec.num_groups)
    names = ADULT_ATTRIBUTES
    for (sex, bucket, occupation), count in counted.items():
        g = (names["sex"].index(sex) * 6 + bucket) * 13 + names["occupation"].index(occupation)
        assert int(ours[g]) == count
    assert int((ours > 0).sum()) == 156  # every group has training samples (the merges see to it)
    assert int((ours >= 100).sum()) == 91


def test_every_data_set_loads_as_train_and_test_through_one_function(tmp_path):
    """Issue #14: loaders returned one split or two; load_splits returns (train, test) for every data set."""
    from ceag_cooper.data import DATA_SETS, load_splits, make_group_imbalanced_task

    train, test = load_splits("synthetic", num_samples=500, seed=3)
    task = make_group_imbalanced_task(500, seed=3)
    assert torch.equal(torch.cat([train.inputs, test.inputs]), task.inputs)  # the first 80% train, in order
    assert (len(train), len(test)) == (400, 100)
    assert set(DATA_SETS) >= {"utkface", "fairface", "adult", "omniglot", "cifar100", "synthetic"}
    for name in ("utkface", "fairface", "adult", "omniglot", "cifar100"):  # each names where its files go
        with pytest.raises(FileNotFoundError):
            load_splits(name, tmp_path)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_splits("mnist")


def test_fairface_and_cifar100_are_tasks_of_the_harness(tmp_path):
    from ceag_cooper.experiments import ExperimentConfig, load_task

    for task in ("fairface", "cifar100"):
        with pytest.raises(FileNotFoundError):
            load_task(ExperimentConfig(task=task, data_dir=str(tmp_path), protected=("race",) if task == "fairface"
                                       else ("coarse",)))  # fmt: skip
