"""The dtype names a config may give (`models.dtype`, mergekit's `dtype` and `out_dtype`) and their torch types."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
