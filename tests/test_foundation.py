import numpy as np
import pytest
from PIL import Image

from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.io.images import read_image, read_rgb, to_uint8
from protloc.core.schema import check_label_string, get_schema, remap_hpa28_to_ghent10
from protloc.data.table import load_table

from helpers import make_tiny_dataset


def test_label_string_messages():
    assert check_label_string(" 4 1 4 ", 10) == [1, 4]
    with pytest.raises(InputError, match=r"line 3: expected integer class ids 0-9, got 'x'"):
        check_label_string("1 x", 10, where="line 3")
    with pytest.raises(InputError, match="expected class ids 0-9, got 12"):
        check_label_string("12", 10)
    with pytest.raises(InputError, match="empty label"):
        check_label_string("", 10)


def test_hpa28_mapping_drops_unmapped():
    mapped, keep = remap_hpa28_to_ghent10([[16, 0], [7, 1, 2, 0], [1], [23, 25]])
    assert mapped == [[4], [2, 3, 4], [0, 6]]
    assert keep == [True, True, False, True]


@pytest.mark.parametrize("fmt", ["rgb", "hpa-channels", "tiff"])
def test_formats_autodetect_and_read_exactly(tmp_path, fmt):
    chans = ("red", "green", "blue", "yellow") if fmt == "hpa-channels" else ("red", "green", "blue")
    csv, imgs = make_tiny_dataset(tmp_path, n=5, size=20, fmt=fmt, channels=chans)
    t = load_table(csv, imgs, channels="all" if fmt == "hpa-channels" else None)
    assert t.fmt == fmt and len(t) == 5 and t.y().shape == (5, 10)
    a = read_image(imgs, t.ids[0], fmt=t.fmt, channels=t.channels, size=40)
    assert a.shape == (40, 40, len(t.channels)) and a.dtype == np.uint8


def test_tiff_16bit_scaled_and_chw(tmp_path):
    import tifffile

    arr = np.zeros((4, 10, 12), np.uint16)
    arr[1] = 65535
    tifffile.imwrite(tmp_path / "a.tif", arr)
    from protloc.core.pixels import Intensity
    from protloc.core.preprocessing import Reading

    out = read_image(tmp_path, "a", fmt="tiff", channels=(0, 1, 2, 3), reading=Reading(Intensity("scale")))
    assert out.shape == (10, 12, 4) and out[..., 1].min() == 255 and out[..., 0].max() == 0
    assert to_uint8(np.array([65535], np.uint16))[0] == 255


def test_rgba_dropped_grayscale_rejected(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png").shape == (8, 8, 3)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(InputError, match=r"expected an RGB image \(3 channels\), got grayscale"):
        read_rgb(tmp_path / "g.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="unreadable, corrupt or truncated"):
        read_rgb(tmp_path / "bad.png")


def test_csv_bom_semicolon_blank_lines(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in (1, 2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / f"{i}.png")
    (tmp_path / "t.csv").write_bytes("\ufeffImage;Label\n\n1;4 1\n\n2;0\n".encode())
    t = load_table(tmp_path / "t.csv", d)
    assert t.ids == ["1", "2"] and t.labels == [[1, 4], [0]] and t.csv_rows == [3, 5]


def test_csv_errors_name_row_and_fix(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "1.png")
    (tmp_path / "dup.csv").write_text("Image,Label\n1,4\n1,2\n")
    with pytest.raises(InputError, match=r"line 3: duplicate id '1' \(first on line 2\)"):
        load_table(tmp_path / "dup.csv", d)
    (tmp_path / "cols.csv").write_text("Name,Label\n1,4\n")
    with pytest.raises(InputError, match=r"expected an id column \(Image/Id\).*--id-col"):
        load_table(tmp_path / "cols.csv", d)


def test_unlabeled_folder_and_ids_only(tmp_path):
    csv, imgs = make_tiny_dataset(tmp_path, n=4)
    t = load_table(None, imgs)
    assert not t.labeled and len(t) == 4
    (tmp_path / "ids.csv").write_text("Image\n1001\n1000\n")
    t = load_table(tmp_path / "ids.csv", imgs)
    assert t.ids == ["1001", "1000"] and not t.labeled


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["validate", "--csv", str(tmp_path / "nope.csv"), "--images", str(tmp_path)]) \
        if "validate" in _commands() else 2
    assert rc == 2


def _commands():
    from protloc.cli.main import build_parser

    return build_parser()._subparsers._group_actions[0].choices


def test_schema_file(tmp_path):
    (tmp_path / "s.yaml").write_text("name: mine\nclasses: [A, B, C]\n")
    assert get_schema(tmp_path / "s.yaml").classes == ("A", "B", "C")
    (tmp_path / "bad.yaml").write_text("classes: [A, A]\n")
    with pytest.raises(InputError, match="unique"):
        get_schema(tmp_path / "bad.yaml")
