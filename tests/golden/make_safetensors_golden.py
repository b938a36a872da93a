#!/usr/bin/env python3
"""Writes tests/golden/safetensors/golden.safetensors with the reference implementation
(Hugging Face `safetensors`, Rust core) so lathe's reader is checked against files it did not
write itself. Values are simple closed forms that tests/core/test_safetensors.cpp restates.

    python3 -m venv /tmp/st && /tmp/st/bin/pip install safetensors numpy
    /tmp/st/bin/python tests/golden/make_safetensors_golden.py
"""
import os

import numpy as np
from safetensors import TensorSpec, serialize


def spec(dtype, array):
    array = np.array(array, order="C")  # ascontiguousarray would turn 0-dim into 1-dim
    keep.append(array)
    return TensorSpec(dtype=dtype, shape=tuple(array.shape), data_ptr=array.ctypes.data,
                      data_len=array.nbytes)


keep = []  # the buffers must outlive serialize()
tensors = {
    "f32.weight": spec("float32", np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25 - 1.0),
    "f64.values": spec("float64", np.array([1.0 / 3.0, -2.5, 1e300], dtype=np.float64)),
    # 1, -0.5, the largest half, the smallest normal (2^-14), the smallest subnormal (2^-24)
    "f16.half": spec("float16", np.array([1.0, -0.5, 65504.0, 2.0**-14, 2.0**-24], np.float16)),
    # numpy has no bfloat16: raw bits of 1.0, -2.0, 3.140625, 0.0
    "bf16.brain": spec("bfloat16", np.array([0x3F80, 0xC000, 0x4049, 0x0000], dtype=np.uint16)),
    "i64.ids": spec("int64", np.array([0, -1, 2**40, -(2**63)], dtype=np.int64)),
    "i32.counts": spec("int32", np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int32)),
    "i8.small": spec("int8", np.array([-128, -1, 0, 127], dtype=np.int8)),
    "u8.bytes": spec("uint8", np.array([0, 1, 200, 255], dtype=np.uint8)),
    "bool.mask": spec("bool", np.array([True, False, True])),
    "scalar": spec("float32", np.array(42.5, dtype=np.float32)),
    "empty": spec("float32", np.zeros((0, 4), dtype=np.float32)),
}
data = bytes(serialize(tensors, metadata={"format": "pt", "source": "lathe golden"}))
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "safetensors", "golden.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "wb") as f:
    f.write(data)
print(f"wrote {out}: {len(data)} bytes")
