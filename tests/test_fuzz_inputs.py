"""Property-based tests (hypothesis) of everything protloc reads from users: the CSV, label, JSON and
YAML readers, the run-folder readers and the image decoders. Whatever the bytes, the answer is a
value or an InputError-family exception (InputError, RunFolderError, ImageReadError), never another
exception type. Bounded (``max_examples``) to stay fast on 2 busy cores; ``PROTLOC_FUZZ_EXAMPLES=2000``
runs a deeper search by hand."""

from __future__ import annotations

import io
import os
import shutil
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protloc.core.errors import InputError  # noqa: E402

N = int(os.environ.get("PROTLOC_FUZZ_EXAMPLES", "60"))
FAST = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

#: text that looks like CSV: separators, quotes, newlines, digits (ASCII and not), NUL, BOM
CSV_ALPHABET = st.sampled_from(list("Image,Label;\t|\"'\n\r 0123456789-/.\\xé²٣\x00\ufeff"))
csv_text = st.text(CSV_ALPHABET, max_size=200)


def _write(tmp_path, name, data) -> "Path":  # noqa: F821
    p = tmp_path / name
    (p.write_bytes if isinstance(data, bytes) else lambda t: p.write_text(t, encoding="utf-8"))(data)
    return p


@FAST
@given(data=st.one_of(csv_text.map(lambda t: "Image,Label\n" + t), csv_text, st.binary(max_size=200)))
def test_label_csv_reader_answers_or_refuses(tmp_path, data):
    from protloc.data.table import ragged_problem, read_csv_table

    p = _write(tmp_path, "t.csv", data)
    try:
        df, id_col, lab_col = read_csv_table(p)
    except InputError:
        return
    assert id_col in df.columns and list(df["_line"]) == sorted(df["_line"])  # real, increasing line numbers
    for _, err in ragged_problem(df, p):
        assert isinstance(err, InputError)


@FAST
@given(data=st.one_of(csv_text.map(lambda t: "Image,Label\n" + t), st.binary(max_size=200)))
def test_table_loaders_answer_or_refuse(tmp_path, data):
    """load_table / lenient_table with any CSV against a real image folder."""
    from helpers import make_tiny_dataset

    from protloc.data.table import lenient_table, load_table

    images = tmp_path / "data" / "train"
    if not images.is_dir():
        make_tiny_dataset(tmp_path / "data", n=3, size=8)
    p = _write(tmp_path, "x.csv", data)
    for fn in (load_table, lenient_table):
        try:
            t = fn(p, images)
        except InputError:
            continue
        table = t[0] if isinstance(t, tuple) else t
        for iid in table.ids:  # ids are file names inside --images, never paths
            assert "/" not in iid and "\\" not in iid and iid not in (".", "..")


@FAST
@given(text=st.one_of(st.text(max_size=40), st.text(st.sampled_from(list("0123456789 ,;²٣١")), max_size=60)),
       n=st.integers(1, 40))
def test_class_id_parser_returns_ids_in_range_or_refuses(text, n):
    from protloc.core.schema import parse_class_ids

    try:
        ids = parse_class_ids(text, n, where="x", allow_empty=True)
    except InputError:
        return
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)
    # every token was made of ASCII digits only
    assert all(c.isascii() for c in text if c.isdigit())


@FAST
@given(iid=st.text(max_size=30))
def test_image_ids_are_file_names(iid):
    from protloc.core.paths import check_image_id

    try:
        check_image_id(iid, where="x")
    except InputError:
        return
    assert "/" not in iid and "\\" not in iid and iid not in (".", "..")


json_like = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.integers(),
                                   st.text(max_size=10)),
                         lambda c: st.one_of(st.lists(c, max_size=4),
                                             st.dictionaries(st.text(max_size=8), c, max_size=4)),
                         max_leaves=12)


@FAST
@given(data=st.one_of(st.binary(max_size=120), st.text(max_size=120), json_like.map(lambda o: __import__("json").dumps(o))))
def test_json_yaml_and_schema_readers(tmp_path, data):
    from protloc.core.readers import read_json, read_yaml
    from protloc.core.schema import get_schema

    for name in ("s.json", "s.yaml"):
        p = _write(tmp_path, name, data)
        for fn in (lambda: read_json(p, kind=None), lambda: read_yaml(p, kind=None), lambda: get_schema(p)):
            try:
                fn()
            except InputError:
                pass


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from helpers import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("fuzzrun"), n=6, size=16)


RUN_FILES = ["thresholds.json", "oof.csv", "config.yaml", "model.json", "data.json", "summary.json", "schema.json",
             "preprocessing.json", "splits.csv", "metrics.csv"]


@FAST
@given(name=st.sampled_from(RUN_FILES),
       data=st.one_of(st.binary(max_size=120), csv_text, json_like.map(lambda o: __import__("json").dumps(o))))
def test_run_folder_readers(tmp_path, base_run, name, data):
    """Any bytes in any run-folder file: every reader answers or raises RunFolderError/InputError."""
    from protloc.core.runfolder import RunFolder

    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(base_run, run)
    _write(run, name, data)
    rf = RunFolder(run)
    for read in (rf.preprocessing, rf.schema, rf.config, rf.model_spec, rf.data_source, rf.summary, rf.thresholds,
                 rf.oof, rf.splits, rf.metrics):
        try:
            read()
        except InputError:
            pass


# -- image decoders ----------------------------------------------------------------------------
def _png(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _tiff(arr) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


shapes = st.one_of(st.tuples(st.integers(1, 12), st.integers(1, 12)),
                   st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 3, 4, 5])),
                   st.tuples(st.sampled_from([1, 2, 3, 4, 5]), st.integers(1, 12), st.integers(1, 12)))
dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.bool_])


@st.composite
def image_bytes(draw):
    shape, dtype = draw(shapes), draw(dtypes)
    arr = (np.random.default_rng(draw(st.integers(0, 99))).random(shape) * 300).astype(dtype)
    kind = draw(st.sampled_from(["png", "tiff"]))
    try:
        data = _png(arr) if kind == "png" else _tiff(arr)
    except (TypeError, ValueError, KeyError, OSError):  # PIL cannot write this dtype/shape as PNG
        assume(False)
    cut = draw(st.one_of(st.none(), st.integers(0, max(len(data) - 1, 0))))
    flip = draw(st.one_of(st.none(), st.integers(0, max(len(data) - 1, 0))))
    data = bytearray(data if cut is None else data[:cut])
    if flip is not None and flip < len(data):
        data[flip] ^= 0xFF
    return kind, bytes(data)


@settings(max_examples=N + N // 3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item=st.one_of(image_bytes(), st.tuples(st.sampled_from(["png", "tiff"]), st.binary(max_size=300))))
def test_image_decoders_answer_or_refuse(tmp_path, item):
    """Random bytes, truncated or bit-flipped PNG/TIFF of random shapes and dtypes: the readers return
    a uint8 (H, W, C) array or raise an InputError-family error; so does the run's prepare step."""
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.schema import get_schema
    from protloc.io.images import read_array, read_image

    kind, data = item
    folder = tmp_path / kind
    folder.mkdir(exist_ok=True)
    name = "1.png" if kind == "png" else "1.tif"
    (folder / name).write_bytes(data)
    pre = Preprocessing(fmt="rgb", channels=("red", "green", "blue"), size=8, mean=(0.1,) * 3, std=(0.2,) * 3,
                        schema=get_schema("ghent10"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_array(folder / name)
        except InputError:
            pass
        for fmt in ("rgb", "tiff", "auto"):
            try:
                img = read_image(folder, "1", fmt=fmt)
            except InputError:
                continue
            assert img.dtype == np.uint8 and img.ndim == 3
            try:
                out = pre.prepare(img, where=name)
            except InputError:
                continue
            assert out.shape == (8, 8, 3) and out.dtype == np.uint8
