"""Regenerates the tiny PyTorch checkpoints the weights tests read (needs torch).

    python tests/data/make_fixtures.py

Values are small integers/halves so the Rust tests can state them exactly.
"""
import collections
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))

base = torch.arange(6, dtype=torch.float32).reshape(2, 3)  # [[0,1,2],[3,4,5]]
sd = collections.OrderedDict()
sd["linear.weight"] = base
sd["linear.weight_t"] = base.t()  # non-contiguous view sharing linear.weight's storage
sd["half"] = torch.tensor([0.5, -1.25, 2.0], dtype=torch.float16)
sd["bf16"] = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
sd["bn.num_batches_tracked"] = torch.tensor(7)  # i64 scalar, shape []
sd["offset_view"] = torch.arange(10, dtype=torch.float32)[4:7]  # storage offset 4
sd["int32"] = torch.tensor([1, -2, 3], dtype=torch.int32)
sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
sd["param"] = torch.nn.Parameter(torch.tensor([[1.5, 2.5]]))
sd["permuted"] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).permute(2, 0, 1)

torch.save(sd, os.path.join(here, "tiny_zip.pt"))
torch.save(sd, os.path.join(here, "tiny_legacy.pt"), _use_new_zipfile_serialization=False)
torch.save({"state_dict": sd, "epoch": 3}, os.path.join(here, "tiny_nested_zip.pt"))
torch.save(
    {"model": sd, "epoch": 3},
    os.path.join(here, "tiny_nested_legacy.pt"),
    _use_new_zipfile_serialization=False,
)
# Protocol 4 exercises FRAME, SHORT_BINUNICODE, MEMOIZE and STACK_GLOBAL.
torch.save(sd, os.path.join(here, "tiny_zip_proto4.pt"), pickle_protocol=4)
