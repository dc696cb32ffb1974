"""The safetensors file format, read and written with the standard library and NumPy
(no safetensors or torch needed; docs/formats.md): 8 bytes of little-endian header
length, a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}} (plus an
optional "__metadata__"), then the raw little-endian tensor bytes. Never a pickle.

Floating dtypes are upcast to float64 exactly (every float32, float16 and bfloat16 value
is a float64 value); ``read`` says which tensors were upcast from what.

>>> import os, tempfile, numpy
>>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
>>> write(p, {"a.weight": numpy.arange(6.0).reshape(2, 3)})
>>> arrays, upcast = read(p)
>>> arrays["a.weight"].tolist(), upcast
([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], {})
"""
import json
import struct

import numpy

from rssm_ref.util.paths import atomic_write

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
MAX_HEADER = 100 * 1024 * 1024


def looks_like(head):
    """Whether the first bytes of a file are a safetensors header (length, then '{')."""
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def read(path):
    """(arrays, upcast): every tensor of ``path`` as a NumPy array, floating ones as
    float64; ``upcast`` maps each upcast tensor to its stored dtype. Raises ValueError
    naming the file (and tensor) for anything malformed."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated safetensors file (expected an 8-byte header length)")
    n = struct.unpack("<Q", raw[:8])[0]
    if not 2 <= n <= min(MAX_HEADER, len(raw) - 8):
        raise ValueError(f"{path}: safetensors header length {n} does not fit the file "
                         f"({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: safetensors header is not UTF-8 JSON") from None
    data = raw[8 + n:]
    arrays, upcast = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor '{name}': malformed header entry {info!r}") from None
        if code not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}': dtype {code} (expected one of "
                             f"{', '.join(DTYPES)})")
        dt = numpy.dtype(DTYPES[code])
        count = int(numpy.prod(shape, dtype=numpy.int64))
        if not (0 <= begin <= end <= len(data)) or end - begin != count * dt.itemsize:
            raise ValueError(f"{path}: tensor '{name}': data offsets {begin}..{end} do not hold "
                             f"{shape} {code} values (file truncated or corrupt)")
        arr = numpy.frombuffer(data[begin:end], dtype=dt).reshape(shape)
        if code == "BF16":           # the top 16 bits of a float32: exact
            arr = (arr.astype(numpy.uint32) << numpy.uint32(16)).view(numpy.float32)
        if code in ("F32", "F16", "BF16"):
            upcast[name] = code
        arrays[name] = arr.astype(numpy.float64) if arr.dtype.kind == "f" else arr.copy()
    if not arrays:
        raise ValueError(f"{path}: empty safetensors file (expected tensors)")
    return arrays, upcast


def write(path, arrays):
    """Write ``arrays`` (name -> NumPy array; float64, float32, float16 or integer) as a
    safetensors file, atomically."""
    codes = {numpy.dtype(v).str: k for k, v in DTYPES.items() if k != "BF16"}
    header, blobs, offset = {}, [], 0
    for name in sorted(arrays):
        a = numpy.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        code = codes.get(a.dtype.str)
        if code is None:
            raise ValueError(f"{path}: tensor '{name}': dtype {a.dtype} has no safetensors code")
        b = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    atomic_write(path, lambda fh: fh.write(struct.pack("<Q", len(head)) + head + b"".join(blobs)))
