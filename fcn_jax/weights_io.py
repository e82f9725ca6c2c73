"""Reading pretrained weight files (`.safetensors` and `.npz`) into numpy arrays.

The safetensors format is: an 8-byte little-endian unsigned header length N, N bytes
of UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets"}``
(an optional ``"__metadata__"`` entry is ignored), then the raw little-endian,
C-ordered tensor bytes; ``data_offsets = [begin, end)`` count from the first byte
after the header. The file is memory-mapped, so tensors are read on first use.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np

# The reference implementation refuses headers above 100 MB as well.
_MAX_HEADER_BYTES = 100 << 20

# safetensors dtype name -> (little-endian storage dtype, dtype to view it as).
_SAFETENSORS_DTYPES: Mapping[str, tuple[np.dtype, np.dtype]] = {
    'F64': (np.dtype('<f8'), np.dtype('<f8')),
    'F32': (np.dtype('<f4'), np.dtype('<f4')),
    'F16': (np.dtype('<f2'), np.dtype('<f2')),
    'BF16': (np.dtype('<u2'), np.dtype(ml_dtypes.bfloat16)),
}


def _tensor_from_buffer(path: str, name: str, info: object, buf: np.ndarray) -> np.ndarray:
    """Returns one tensor of a safetensors data buffer, checking its header entry."""
    if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= info.keys():
        raise ValueError(f'{path}: header entry {name!r} lacks dtype/shape/data_offsets')
    if info['dtype'] not in _SAFETENSORS_DTYPES:
        raise ValueError(f'{path}: tensor {name!r} has unsupported dtype {info["dtype"]!r} '
                         f'(supported: {", ".join(_SAFETENSORS_DTYPES)})')
    storage, view = _SAFETENSORS_DTYPES[info['dtype']]
    shape, offsets = info['shape'], info['data_offsets']
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f'{path}: tensor {name!r} has an invalid shape {shape!r}')
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)):
        raise ValueError(f'{path}: tensor {name!r} has invalid data_offsets {offsets!r}')
    begin, end = offsets
    if not 0 <= begin <= end <= buf.size:
        raise ValueError(f'{path}: tensor {name!r} data_offsets {offsets} lie outside the '
                         f'{buf.size}-byte data buffer (file truncated?)')
    nbytes = math.prod(shape) * storage.itemsize
    if end - begin != nbytes:
        raise ValueError(f'{path}: tensor {name!r} has {end - begin} bytes, but dtype '
                         f'{info["dtype"]} and shape {shape} need {nbytes}')
    array = buf[begin:end].view(storage)
    if view != storage:  # BF16: bring the raw bits to native byte order, then reinterpret.
        array = np.asarray(array, dtype=np.uint16).view(view)
    return array.reshape(shape)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of a `.safetensors` file (F64, F32, F16 or BF16).

    Arrays are read-only views of a memory map of the file. Raises ValueError naming
    the file and the problem if it is missing, truncated or malformed.
    """
    path = os.fspath(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode='r')
    except (OSError, ValueError) as e:  # missing, unreadable or empty file
        raise ValueError(f'{path}: cannot read safetensors file: {e}') from None
    if data.size < 8:
        raise ValueError(f'{path}: too short for a safetensors file ({data.size} bytes)')
    header_len = int.from_bytes(data[:8].tobytes(), 'little')
    if header_len > min(_MAX_HEADER_BYTES, data.size - 8):
        raise ValueError(f'{path}: header length {header_len} does not fit the '
                         f'{data.size}-byte file; not a safetensors file?')
    try:
        header = json.loads(data[8:8 + header_len].tobytes().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: safetensors header is not valid JSON: {e}') from None
    if not isinstance(header, dict):
        raise ValueError(f'{path}: safetensors header is not a JSON object')
    buf = data[8 + header_len:]
    return {name: _tensor_from_buffer(path, name, info, buf)
            for name, info in header.items() if name != '__metadata__'}


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of a `.npz` file (no pickled objects)."""
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError('it holds a single .npy array, not an npz archive')
        with npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f'{path}: cannot read npz file: {e}') from None


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a flat name -> array mapping from a `.safetensors` or `.npz` file."""
    path = os.fspath(path)
    if path.endswith('.safetensors'):
        return read_safetensors(path)
    if path.endswith('.npz'):
        return read_npz(path)
    raise ValueError(f'{path}: unknown weight file type; expected .safetensors or .npz')
