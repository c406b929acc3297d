"""Dataset layouts parsed from small trees made here: Market, Duke, MSMT17 (V1 lists, V2 folders), folder."""

from pathlib import Path

import pytest

from dgnet.data import Sample, load_dataset

JPEG = bytes.fromhex("ffd8ffd9")  # the loaders read names only; real pixels are exercised elsewhere


def touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(JPEG)


def market_tree(root: Path) -> Path:
    touch(root, "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0002_c2s1_000551_01.jpg",
          "bounding_box_train/0007_c3s2_000101_01.jpg", "bounding_box_train/0007_c6s1_000001_02.jpg",
          "bounding_box_train/0000_c1s1_000001_01.jpg", "bounding_box_train/-1_c1s1_000002_01.jpg",
          "query/0003_c1s1_000001_00.jpg", "query/0004_c2s1_000001_00.jpg",
          "bounding_box_test/0003_c4s1_000101_01.jpg", "bounding_box_test/0004_c5s1_000101_01.jpg",
          "bounding_box_test/0000_c1s1_000201_01.jpg", "bounding_box_test/-1_c3s1_000301_01.jpg")
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")  # Market ships these; they are ignored
    return root


def test_market(tmp_path, capsys):
    ds = load_dataset("market1501", market_tree(tmp_path))
    # junk and distractors leave train; labels are 0..K-1 in order of original ids
    assert ds.num_train_pids == 2 and ds.pid_map == {2: 0, 7: 1}
    assert sorted((s.pid, s.camid) for s in ds.train) == [(0, 0), (0, 1), (1, 2), (1, 5)]
    assert sorted(s.pid for s in ds.gallery) == [-1, 0, 3, 4]  # junk and distractor stay in the gallery
    assert {(s.pid, s.camid) for s in ds.query} == {(3, 0), (4, 1)}
    assert all(isinstance(s, Sample) and Path(s.path).exists() for s in ds.train + ds.query + ds.gallery)
    table = capsys.readouterr().out
    assert "train" in table and "gallery" in table
    row = next(line for line in table.splitlines() if line.strip().startswith("gallery")).split()
    assert row[1:] == ["4", "4", "4"]  # ids, images, cameras


def test_market_unpacked_subfolder(tmp_path):
    market_tree(tmp_path / "Market-1501-v15.09.15")
    assert load_dataset("market1501", tmp_path, verbose=False).num_train_pids == 2


def test_wrong_name_names_path_and_pattern(tmp_path):
    market_tree(tmp_path)
    touch(tmp_path, "query/img_0001.jpg")
    with pytest.raises(ValueError, match=r"img_0001\.jpg.*pattern.*0002_c1s1_000451_03\.jpg"):
        load_dataset("market1501", tmp_path, verbose=False)


def test_duke(tmp_path):
    touch(tmp_path, "bounding_box_train/0005_c2_f0046985.jpg", "bounding_box_train/0005_c3_f0046999.jpg",
          "query/0010_c1_f0000001.jpg", "bounding_box_test/0010_c8_f0000002.jpg")
    ds = load_dataset("dukemtmc", tmp_path, verbose=False)
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 1), (0, 2)]
    assert ds.gallery[0].camid == 7
    # a Market name is not a Duke name
    touch(tmp_path, "query/0002_c1s1_000451_03.jpg")
    with pytest.raises(ValueError, match="0005_c2_f0046985"):
        load_dataset("dukemtmc", tmp_path, verbose=False)


def test_empty_split(tmp_path):
    touch(tmp_path, "bounding_box_train/0000_c1s1_000001_01.jpg", "query/0003_c1s1_000001_00.jpg",
          "bounding_box_test/0003_c4s1_000101_01.jpg")
    with pytest.raises(ValueError, match="split 'train'.*empty"):
        load_dataset("market1501", tmp_path, verbose=False)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        load_dataset("market1501", tmp_path, verbose=False)


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="market1501"):
        load_dataset("viper", tmp_path)


def msmt_lists(root: Path, train_dir: str, test_dir: str) -> None:
    train = ["0000/0000_000_01_0303morning_0015_0.jpg", "0000/0000_001_05_0303morning_0016_0.jpg",
             "0003/0003_000_12_0303noon_0100_0.jpg"]
    val = ["0004/0004_000_02_0303noon_0200_0.jpg", "0004/0004_003_15_0303noon_0201_1.jpg"]
    query = ["0000/0000_000_01_0303morning_0001_0.jpg"]
    gallery = ["0000/0000_001_10_0303morning_0002_0.jpg", "0001/0001_000_03_0303afternoon_0003_0.jpg"]
    touch(root / train_dir, *train, *val)
    touch(root / test_dir, *query, *gallery)
    for name, lines in (("train", train), ("val", val), ("query", query), ("gallery", gallery)):
        (root / f"list_{name}.txt").write_text("".join(f"{p} {int(p[:4])}\n" for p in lines))


def test_msmt17_v1_lists(tmp_path):
    msmt_lists(tmp_path, "train", "test")
    ds = load_dataset("msmt17", tmp_path, verbose=False)
    # train = list_train + list_val (the 1041-identity split the reference trains on)
    assert ds.pid_map == {0: 0, 3: 1, 4: 2}
    assert sorted(s.camid for s in ds.train) == [0, 1, 4, 11, 14]  # two-digit cameras, zero-based
    assert [(s.pid, s.camid) for s in ds.query] == [(0, 0)]
    assert sorted((s.pid, s.camid) for s in ds.gallery) == [(0, 9), (1, 2)]
    assert all(Path(s.path).exists() for s in ds.train + ds.query + ds.gallery)


def test_msmt17_v2_folders(tmp_path):
    msmt_lists(tmp_path, "mask_train_v2", "mask_test_v2")
    ds = load_dataset("msmt17", tmp_path, verbose=False)
    assert ds.num_train_pids == 3 and all("mask_train_v2" in s.path for s in ds.train)
    # without train lists, V2's <pid>/<image> folders are the train split
    (tmp_path / "list_train.txt").unlink()
    (tmp_path / "list_val.txt").unlink()
    ds = load_dataset("msmt17", tmp_path, verbose=False)
    assert ds.pid_map == {0: 0, 3: 1, 4: 2} and len(ds.train) == 5


def test_msmt17_bad_line(tmp_path):
    msmt_lists(tmp_path, "train", "test")
    (tmp_path / "list_query.txt").write_text("0000/0000_000_01_0303morning_0001_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query\.txt:1.*relative/path\.jpg pid"):
        load_dataset("msmt17", tmp_path, verbose=False)


def test_msmt17_bad_camera(tmp_path):
    msmt_lists(tmp_path, "train", "test")
    (tmp_path / "list_query.txt").write_text("0000/0000_x.jpg 0\n")
    with pytest.raises(ValueError, match="two-digit camera"):
        load_dataset("msmt17", tmp_path, verbose=False)


def folder_tree(root: Path) -> None:
    touch(root, "train/12/a_c1_1.jpg", "train/12/b_c2_1.jpg", "train/30/a_c3_1.jpg", "train/30/b_c3_2.jpg",
          "query/40/q_c1.jpg", "gallery/40/g_c2.jpg", "gallery/-1/junk_c1.jpg")


def test_folder_camera_from_name(tmp_path):
    folder_tree(tmp_path)
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert sorted((s.pid, s.camid) for s in ds.train) == [(0, 0), (0, 1), (1, 2), (1, 2)]
    assert ds.pid_map == {12: 0, 30: 1}
    assert sorted((s.pid, s.camid) for s in ds.gallery) == [(-1, 0), (40, 1)]
    ds = load_dataset("folder", tmp_path, verbose=False, camera_pattern=r"(\d)\.jpg$")  # the last digit
    assert sorted(s.camid for s in ds.train) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match=r"a_c1_1\.jpg does not match camera pattern"):
        load_dataset("folder", tmp_path, verbose=False, camera_pattern=r"cam(\d+)")


def test_folder_train_keeps_identity_zero_and_drops_junk(tmp_path):
    """MSMT17's identity 0 is a person, and dgnet.export writes it as train/0000: it must survive a reload."""
    touch(tmp_path, "train/0000/0000_c1_g0.jpg", "train/0000/0000_c2_g1.jpg", "train/0005/0005_c1_g2.jpg",
          "train/-1/x_c1.jpg", "query/0005/q_c1.jpg", "gallery/0005/g_c2.jpg", "gallery/0000/d_c3.jpg")
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert ds.pid_map == {0: 0, 5: 1} and len(ds.train) == 3
    assert sorted(s.pid for s in ds.gallery) == [0, 5]


def test_folder_camera_csv(tmp_path):
    folder_tree(tmp_path)
    rows = ["train/12/a_c1_1.jpg,4", "train/12/b_c2_1.jpg,4", "train/30/a_c3_1.jpg,5", "train/30/b_c3_2.jpg,6",
            "query/40/q_c1.jpg,0", "gallery/40/g_c2.jpg,1"]
    (tmp_path / "cameras.csv").write_text("path,camid\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"junk_c1\.jpg has no row"):
        load_dataset("folder", tmp_path, verbose=False)
    (tmp_path / "cameras.csv").write_text("path,camid\n" + "\n".join(rows + ["gallery/-1/junk_c1.jpg,2"]) + "\n")
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert sorted(s.camid for s in ds.train) == [4, 4, 5, 6]
    assert sorted(s.camid for s in ds.gallery) == [1, 2]


def test_folder_named_identities(tmp_path):
    touch(tmp_path, "train/alice/x_c1.jpg", "train/alice/y_c2.jpg", "query/bob/x_c1.jpg", "gallery/bob/y_c2.jpg",
          "gallery/carol/z_c2.jpg")
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert ds.num_train_pids == 1
    assert ds.query[0].pid == [s for s in ds.gallery if "bob" in s.path][0].pid  # names agree across splits
    assert len({s.pid for s in ds.gallery}) == 2


def test_single_image_identity_note(tmp_path, capsys):
    touch(tmp_path, "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0003_c1s1_000451_03.jpg",
          "bounding_box_train/0003_c2s1_000451_03.jpg", "query/0005_c1s1_000001_00.jpg",
          "bounding_box_test/0005_c2s1_000001_00.jpg")
    load_dataset("market1501", tmp_path)
    assert "1 train identities have a single image" in capsys.readouterr().out


CSV_ROWS = ["train/12/a_c1_1.jpg,4", "train/12/b_c2_1.jpg,4", "train/30/a_c3_1.jpg,5", "train/30/b_c3_2.jpg,6",
            "query/40/q_c1.jpg,0", "gallery/40/g_c2.jpg,1", "gallery/-1/junk_c1.jpg,2"]


@pytest.mark.parametrize(
    ("value", "why"),
    [("c2", "is not an integer"), ("1.0", "is not an integer"), ("", "is not an integer"),
     ("-1", "is negative"), ("-3", "is negative")],
)
def test_folder_camera_csv_bad_camid(tmp_path, value, why):
    """The error names the file, the line, the image path and the value, and says what a camid is."""
    folder_tree(tmp_path)
    rows = list(CSV_ROWS)
    rows[2] = f"train/30/a_c3_1.jpg,{value}"  # line 4 of the file (the header is line 1)
    (tmp_path / "cameras.csv").write_text("path,camid\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError) as info:
        load_dataset("folder", tmp_path, verbose=False)
    msg = str(info.value)
    assert f"{tmp_path / 'cameras.csv'}:4" in msg and "'train/30/a_c3_1.jpg'" in msg and repr(value) in msg, msg
    assert why in msg and "zero-based integer camera" in msg, msg


def test_folder_camera_csv_short_row(tmp_path):
    folder_tree(tmp_path)
    rows = [*CSV_ROWS[:5], "gallery/40/g_c2.jpg", CSV_ROWS[6]]
    (tmp_path / "cameras.csv").write_text("path,camid\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"cameras\.csv:7: .*'gallery/40/g_c2\.jpg'.*no camid"):
        load_dataset("folder", tmp_path, verbose=False)


@pytest.mark.parametrize("camid", ["4", "7"])
def test_folder_camera_csv_duplicate_path(tmp_path, camid):
    """One row per image: a second row for a path, agreeing or not, names both lines."""
    folder_tree(tmp_path)
    rows = [*CSV_ROWS, f"./train/12/a_c1_1.jpg,{camid}"]  # the same file, spelt with ./
    (tmp_path / "cameras.csv").write_text("path,camid\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"cameras\.csv:9: .*'train/12/a_c1_1\.jpg'.*already on line 2.*one row"):
        load_dataset("folder", tmp_path, verbose=False)


def test_folder_camera_csv_from_a_spreadsheet(tmp_path):
    """Spreadsheet exports start with a byte-order mark and may pad cells with spaces: both are read."""
    folder_tree(tmp_path)
    rows = [r.replace(",", ", ") for r in CSV_ROWS]
    (tmp_path / "cameras.csv").write_bytes(("\ufeffpath,camid\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert sorted(s.camid for s in ds.train) == [4, 4, 5, 6]


def test_folder_camera_csv_not_utf8(tmp_path):
    folder_tree(tmp_path)
    text = "path,camid\n" + "\n".join([*CSV_ROWS, "train/12/café_c1.jpg,3"]) + "\n"
    for bom in (b"", b"\xef\xbb\xbf"):
        (tmp_path / "cameras.csv").write_bytes(bom + text.encode("cp1252"))
        with pytest.raises(ValueError, match=r"cameras\.csv.*not UTF-8.*byte 0xe9 on line 9"):
            load_dataset("folder", tmp_path, verbose=False)


def test_hidden_files_are_not_images(tmp_path):
    """macOS leaves ._name.jpg metadata files beside every image copied to a foreign disk: they are not
    images, in any layout or in the check's scan of a folder."""
    from dgnet.data import check

    market_tree(tmp_path / "m")
    touch(tmp_path / "m", "bounding_box_train/._0002_c1s1_000451_03.jpg", "query/.0003_c1s1_000001_00.jpg")
    ds = load_dataset("market1501", tmp_path / "m", verbose=False)
    assert len(ds.train) == 4 and len(ds.query) == 2
    folder_tree(tmp_path / "f")
    touch(tmp_path / "f", "train/12/._a_c1_1.jpg")
    assert len(load_dataset("folder", tmp_path / "f", verbose=False).train) == 4
    assert not any(p.name.startswith(".") for p in check._files(tmp_path)[1])


def test_broken_links_are_samples_the_check_reports(tmp_path):
    """A link to an image on a volume that is not mounted is not silently left out of the dataset: it is a
    sample, and the pre-flight check names it (and --skip-corrupt can leave it out)."""
    from dgnet.data import check

    folder_tree(tmp_path)
    (tmp_path / "train/30/c_c4_1.jpg").symlink_to(tmp_path / "offline" / "c.jpg")
    ds = load_dataset("folder", tmp_path, verbose=False)
    link = str(tmp_path / "train/30/c_c4_1.jpg")
    assert link in [s.path for s in ds.train]
    with pytest.raises(ValueError, match=r"(?s)c_c4_1\.jpg: missing.*offline/c\.jpg"):
        check.preflight(ds.train, skip_corrupt=False, cache=False)
    kept, skipped = check.preflight(ds.train, skip_corrupt=True, cache=False)
    assert skipped == 1 + 4 and link not in [s.path for s in kept]  # and the 4 placeholder JPEGs of this test


def test_folder_identity_spelt_twice_in_a_split(tmp_path):
    """'0012' and '12' are one identity to int(): two folders would silently merge into one."""
    folder_tree(tmp_path)
    touch(tmp_path, "train/0012/c_c1_1.jpg")
    with pytest.raises(ValueError, match=r"train/0012 and .*train/12 .*same identity 12"):
        load_dataset("folder", tmp_path, verbose=False)


def test_folder_named_identities_keep_junk_out_of_training(tmp_path):
    """Identity folders given as names, beside a -1 folder: -1 is junk (never an identity to train), as with
    numbered folders."""
    from PIL import Image

    for split, names in (("train", ["alice", "bob", "-1"]), ("query", ["carol"]), ("gallery", ["carol", "-1"])):
        for n in names:
            (tmp_path / split / n).mkdir(parents=True)
            Image.new("RGB", (8, 16)).save(tmp_path / split / n / f"{n}_c1_0.png")
    ds = load_dataset("folder", tmp_path, verbose=False)
    assert ds.num_train_pids == 2 and all(s.pid >= 0 for s in ds.train)
    assert sorted(s.pid for s in ds.gallery) == [-1, sorted(s.pid for s in ds.query)[0]]


def test_msmt17_lists_with_a_byte_order_mark(tmp_path):
    """List files saved by an editor that writes a UTF-8 byte-order mark: the first path is read, not mangled."""
    from PIL import Image

    for split, pid in (("train", 0), ("train", 1), ("test", 5), ("test", 5)):
        for k in range(2):
            p = tmp_path / split / f"{pid:04d}" / f"{pid:04d}_{k:03d}_{k + 1:02d}_0303morning_0015_0.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16)).save(p)
    bom = "\ufeff"
    (tmp_path / "list_train.txt").write_text(bom + "0000/0000_000_01_0303morning_0015_0.jpg 0\n"
                                             "0001/0001_001_02_0303morning_0015_0.jpg 1\n", encoding="utf-8")
    (tmp_path / "list_query.txt").write_text(bom + "0005/0005_000_01_0303morning_0015_0.jpg 5\n", encoding="utf-8")
    (tmp_path / "list_gallery.txt").write_text(bom + "0005/0005_001_02_0303morning_0015_0.jpg 5\n", encoding="utf-8")
    ds = load_dataset("msmt17", tmp_path, verbose=False)
    assert all(Path(s.path).is_file() for s in ds.train + ds.query + ds.gallery)
    assert [s.camid for s in ds.query + ds.gallery] == [0, 1]


def cuhk03_np_tree(root: Path) -> Path:
    """CUHK03-NP's two box sets, each in Market's three folders, names ``<pid>_c<1|2>_<index>.png``."""
    for subset, extra in (("detected", "0009_c2_3.png"), ("labeled", "0011_c1_4.png")):
        touch(root / subset, "bounding_box_train/0001_c1_1.png", "bounding_box_train/0001_c2_6.png",
              f"bounding_box_train/{extra}", "query/0003_c1_1.png", "query/0004_c2_2.png",
              "bounding_box_test/0003_c2_7.png", "bounding_box_test/0004_c1_8.png", "bounding_box_test/0005_c1_1.png")
    return root


def test_cuhk03_np_detected_and_labeled(tmp_path):
    cuhk03_np_tree(tmp_path / "cuhk03-np")
    ds = load_dataset("cuhk03", tmp_path, verbose=False)  # the folder the archive unpacked into is found
    assert ds.name == "cuhk03" and ds.root.endswith("detected")
    assert ds.pid_map == {1: 0, 9: 1}
    assert sorted((s.pid, s.camid) for s in ds.train) == [(0, 0), (0, 1), (1, 1)]
    assert {(s.pid, s.camid) for s in ds.query} == {(3, 0), (4, 1)}
    assert {(s.pid, s.camid) for s in ds.gallery} == {(3, 1), (4, 0), (5, 0)}
    labeled = load_dataset("cuhk03", tmp_path / "cuhk03-np", verbose=False, subset="labeled")
    assert labeled.root.endswith("labeled") and labeled.pid_map == {1: 0, 11: 1}
    direct = load_dataset("cuhk03", tmp_path / "cuhk03-np" / "labeled", verbose=False)  # the subset folder itself
    assert direct.pid_map == labeled.pid_map


def test_cuhk03_np_through_the_config(tmp_path):
    from dgnet.config import layout_options, resolve_config

    root = cuhk03_np_tree(tmp_path / "cuhk03-np")
    cfg = resolve_config("cuhk03", {"data": {"root": str(root), "cuhk03_subset": "labeled"}})
    ds = load_dataset(cfg.data.dataset, cfg.data.root, verbose=False, **layout_options(cfg.data))
    assert ds.root.endswith("labeled") and cfg.model.num_ids == 767
    with pytest.raises(ValueError, match=r"data.cuhk03_subset='boxes': expected one of \('detected', 'labeled'\)"):
        resolve_config("cuhk03", {"data": {"cuhk03_subset": "boxes"}})


def test_cuhk03_np_errors_name_the_folder_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="detected/bounding_box_train"):
        load_dataset("cuhk03", tmp_path, verbose=False)
    touch(tmp_path / "detected", "bounding_box_train/0001_c3_1.png", "query/0003_c1_1.png",
          "bounding_box_test/0003_c2_7.png")
    with pytest.raises(ValueError, match=r"camera 3 in .*0001_c3_1.png"):
        load_dataset("cuhk03", tmp_path, verbose=False)
