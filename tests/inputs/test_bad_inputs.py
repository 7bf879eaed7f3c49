"""Data files that used to give a traceback, a wrong value or a misleading reason: each is read
right or refused in one line naming what is wrong."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from gda_core.errors import GDAError
from gda_core.inputs.parsers import parse_csv, parse_image_zip, parse_npz
from gda_core.io import npz_bytes


def _npz(**arrays) -> bytes:
    return npz_bytes(arrays)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(images: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, payload in images.items():
            archive.writestr(path, payload)
    return buffer.getvalue()


def test_a_scalar_x_is_one_line():
    with pytest.raises(GDAError, match=r"^data\.npz: X must be \(rows, features\), \(rows, height, width\) or "
                                       r"\(rows, channels, height, width\), got shape \(\)$"):
        parse_npz(_npz(X=np.float64(3.0), y=np.array([0, 1])))


def test_csv_numbers_with_underscores_are_not_numbers():
    payload = b"a,b,label\n14_0,1,0\n2,3,1\n4,5,0\n"
    with pytest.raises(GDAError, match=r"^data\.csv: column 'a' is not numeric \(row 2: '14_0'\)$"):
        parse_csv(payload)
    # as labels they are text (class names), not the number 140
    data = parse_csv(b"a,label\n1,1_0\n2,20\n3,1_0\n")
    assert data.class_names == ["1_0", "20"]


def test_a_csv_with_20000_columns_is_read():
    n = 20_000
    header = ",".join(f"c{i}" for i in range(n)) + ",label\n"
    rows = "".join(",".join(str((r * 7 + i) % 5) for i in range(n)) + f",{r % 2}\n" for r in range(4))
    data = parse_csv((header + rows).encode())
    assert data.features.shape == (4, n)
    assert data.features[3, 12345] == (3 * 7 + 12345) % 5 and data.labels.tolist() == [0, 1, 0, 1]


def test_a_16_bit_greyscale_png_is_scaled_by_its_bit_depth():
    half = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # mode I;16: half of 65535
    dark = Image.fromarray(np.zeros((4, 4), dtype=np.uint8))
    assert half.mode == "I;16"
    data = parse_image_zip(_zip({"a/0.png": _png(half), "b/0.png": _png(dark)}), image_size=4)
    np.testing.assert_allclose(data.features[0], 32768 / 65535, rtol=1e-6)
    np.testing.assert_array_equal(data.features[1], 0.0)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (grey, 8-bit) and holds no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_huge_png_is_refused_for_its_size():
    small = _png(Image.fromarray(np.zeros((4, 4), dtype=np.uint8)))
    payload = _zip({"a/0.png": small, "b/0.png": _png_header_only(100_000, 100_000)})
    with pytest.raises(GDAError, match=r"^images\.zip: image 'b/0\.png' is too large, over the limit of "
                                       r"25000000 pixels$"):
        parse_image_zip(payload, image_size=4)
