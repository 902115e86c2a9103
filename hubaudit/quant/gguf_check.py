"""A GGUF file's layout, checked against its size before any GGUF reader touches it.

gguf-py's ``GGUFReader`` trusts every count in the file: a 114-byte file declaring a 2^40-element array
grows the process without end, a million empty tokens take seconds and gigabytes, and a tensor count of
2^40, an empty file or nested arrays end in an exception that is not a user error. :func:`check_gguf_layout`
walks the header, the metadata and the tensor table with bounded reads: every count and length must fit in
the bytes left in the file, arrays hold scalars or strings (no nesting) and at most ``MAX_ARRAY`` items,
tensors have at most 4 dimensions, a known type and data inside the file. Anything else is an
:class:`~hubaudit.quant.artifact.ArtifactError`: one line, exit 2.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import HubauditError

GGUF_MAGIC = b"GGUF"
# value type -> (struct code, size); 8 string and 9 array are read apart
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
            10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
STRING, ARRAY = 8, 9
MAX_ARRAY = 1 << 19  # items in one metadata array: above every real vocabulary (Gemma's 262,144 tokens)
MAX_STRING = 64 << 20  # one metadata string (a chat template is kilobytes)
MAX_KV = 1 << 16  # metadata entries
MAX_TENSORS = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS


class GGUFLayoutError(HubauditError, ValueError):
    """The file is not a well-formed GGUF file (ArtifactError wraps it with the spec's name)."""


class _Cursor:
    def __init__(self, f, size: int, endian: str):
        self.f, self.size, self.e, self.pos = f, size, endian, 0

    def left(self) -> int:
        return self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise GGUFLayoutError(f"{what} needs {n} bytes and the file has {max(self.left(), 0)} left")
        data = self.f.read(n)
        if len(data) != n:  # pragma: no cover - the file shrank while read
            raise GGUFLayoutError(f"the file ends inside {what}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise GGUFLayoutError(f"{what} needs {n} bytes and the file has {max(self.left(), 0)} left")
        self.f.seek(n, 1)
        self.pos += n

    def num(self, code: str, size: int, what: str):
        return struct.unpack(self.e + code, self.read(size, what))[0]

    def string(self, what: str, keep: bool = True) -> str | None:
        n = self.num("Q", 8, f"the length of {what}")
        if n > MAX_STRING:
            raise GGUFLayoutError(f"{what} declares {n} bytes (more than {MAX_STRING})")
        if not keep:
            self.skip(n, what)
            return None
        return self.read(n, what).decode("utf-8", errors="replace")


def _value(c: _Cursor, vtype: int, key: str, alignment: list, max_array: int) -> None:
    if vtype in _SCALARS:
        code, size = _SCALARS[vtype]
        v = c.num(code, size, f"the value of {key}")
        if key == "general.alignment":
            alignment[0] = v
        return
    if vtype == STRING:
        c.string(f"the value of {key}", keep=False)
        return
    if vtype != ARRAY:
        raise GGUFLayoutError(f"metadata {key} has unknown value type {vtype}")
    itype = c.num("I", 4, f"the item type of {key}")
    count = c.num("Q", 8, f"the length of {key}")
    if itype == ARRAY:
        raise GGUFLayoutError(f"metadata {key} is an array of arrays, which no model file uses")
    if itype != STRING and itype not in _SCALARS:
        raise GGUFLayoutError(f"metadata {key} is an array of unknown type {itype}")
    least = 8 if itype == STRING else _SCALARS[itype][1]  # every item takes at least this many bytes
    if count > max_array or count * least > c.left():
        raise GGUFLayoutError(f"metadata {key} declares {count:,} items, more than "
                              + (f"{max_array:,} (twice the audited model's vocabulary, at most {MAX_ARRAY:,})" if count > max_array else
                                 f"the {c.left():,} bytes left in the file can hold"))
    if itype == STRING:
        for i in range(count):
            c.string(f"item {i} of {key}", keep=False)
    else:
        c.skip(count * least, f"the items of {key}")


def check_gguf_layout(path, vocab_size: int | None = None) -> None:
    """Walk a GGUF file's header, metadata and tensor table with every count bounded by the file's size, and
    every metadata array by ``MAX_ARRAY`` or, given the audited model's ``vocab_size``, twice that (a build of
    the model cannot hold more tokens).

    Raises:
        GGUFLayoutError: the file is empty, not GGUF, truncated, or declares more than it holds.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise GGUFLayoutError(f"it is {size} bytes, shorter than a GGUF header")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFLayoutError("it does not start with the GGUF magic bytes")
        raw = f.read(4)
        endian = "<" if struct.unpack("<I", raw)[0] in (2, 3) else ">" if struct.unpack(">I", raw)[0] in (2, 3) else None
        if endian is None:
            raise GGUFLayoutError(f"GGUF version {struct.unpack('<I', raw)[0]} is not one transformers reads (2 or 3)")
        c = _Cursor(f, size, endian)
        c.pos = 8
        n_tensors = c.num("Q", 8, "the tensor count")
        n_kv = c.num("Q", 8, "the metadata count")
        # the smallest metadata entry: key length 8 + a 1-byte key + type 4 + a 1-byte value; a tensor entry:
        # name length 8 + dims count 4 + one dim 8 + type 4 + offset 8
        if n_kv > MAX_KV or n_kv * 13 > c.left():
            raise GGUFLayoutError(f"it declares {n_kv:,} metadata entries, more than its {c.left():,} bytes can hold")
        if n_tensors > MAX_TENSORS or n_tensors * 32 > c.left():
            raise GGUFLayoutError(f"it declares {n_tensors:,} tensors, more than its {c.left():,} bytes can hold")
        alignment = [32]
        max_array = min(MAX_ARRAY, max(4096, 2 * vocab_size)) if vocab_size else MAX_ARRAY
        for i in range(n_kv):
            key = c.string(f"metadata key {i}")
            _value(c, c.num("I", 4, f"the type of {key}"), key, alignment, max_array)
        tensors = []
        for i in range(n_tensors):
            name = c.string(f"tensor name {i}")
            n_dims = c.num("I", 4, f"the dimensions of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFLayoutError(f"tensor {name} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
            dims = [c.num("Q", 8, f"a dimension of {name}") for _ in range(n_dims)]
            ttype = c.num("I", 4, f"the type of {name}")
            offset = c.num("Q", 8, f"the offset of {name}")
            try:
                block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise GGUFLayoutError(f"tensor {name} has unknown type {ttype}") from None
            n = 1
            for d in dims:
                n *= d
            if n == 0 or dims[0] % block:
                raise GGUFLayoutError(f"tensor {name} has shape {dims}, which its type's blocks of {block} cannot hold")
            tensors.append((name, offset, n // block * nbytes))
        align = alignment[0] if isinstance(alignment[0], int) and 0 < alignment[0] <= 1 << 16 else 32
        start = -(-c.pos // align) * align
        data = size - start
        for name, offset, nbytes in tensors:
            if offset + nbytes > data:
                raise GGUFLayoutError(f"tensor {name} ({nbytes:,} bytes at offset {offset:,}) lies beyond the end of the "
                                      "file; it is truncated or damaged")
