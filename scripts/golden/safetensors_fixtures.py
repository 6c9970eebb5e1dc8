#!/usr/bin/env python3
"""safetensors_fixtures.py: golden files for common/safetensors.c (tests/test_safetensors.c).

Writes into tests/golden/safetensors/ (a few KB in all):

  all_dtypes.safetensors   every classic dtype (spec/data_pipeline.md section 8), scalars,
                           zero-element tensors, odd names (quote, backslash, control char,
                           non-ASCII); safetensors.torch.save_file(..., metadata={"format": "pt"}).
                           The C test reads it, feeds every tensor back through qie's writer and
                           requires identical bytes: the Python package's output IS the golden.
  new_dtypes.safetensors   the recent dtypes (F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, C64, F4): qie
                           reads them (it never writes them).
  sharded/                 diffusers ModelMixin.save_pretrained's layout, rebuilt from its parts:
                           huggingface_hub.split_torch_state_dict_into_shards(max_shard_size=
                           SHARD_SIZE, filename_pattern="diffusion_pytorch_model{suffix}.safetensors"),
                           save_file per shard, index = json.dumps(indent=2, sort_keys=True) + "\n".
                           Includes a tensor bigger than SHARD_SIZE in the middle (it gets a shard
                           of its own, numbered before the open shard). The C test writes the same
                           tensors in the same insertion order and compares every file.
  expected.json            per file and tensor: dtype, shape, nbytes, FNV-1a 64 of the bytes,
                           the first bytes in hex, and a few decoded values for float dtypes;
                           plus the sharded insertion order and SHARD_SIZE.
  qie_written/             written by qie, NOT by this script: tests/test_safetensors.c
                           (test_qie_written) writes it with st_writer_write_sharded when run as
                               QIE_REGEN_GOLDEN=1 build/tests/test_safetensors
                           and otherwise compares its output with it. This script checks that
                           those files load with the safetensors package, hold the values the C
                           test generated (byte k of tensor i = (31*k + 7*i + 3) & 0xff), carry
                           the metadata (several keys, non-ASCII, quotes), and follow the
                           huggingface index conventions; and that hub's splitter, given the same
                           tensors in the same order, assigns the same shards.

Run from the repository root: python3 scripts/golden/safetensors_fixtures.py
Needs torch, safetensors, huggingface_hub, numpy.
"""
import json
import os
import sys

import numpy as np
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OUT = os.path.join("tests", "golden", "safetensors")
SHARD_SIZE = "0.2KB"  # 200 bytes, through the fractional path of parse_size_to_int
PREFIX = "diffusion_pytorch_model"


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def raw(t: torch.Tensor) -> bytes:
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def seq(n, dtype, scale=0.37):
    x = (torch.arange(n, dtype=torch.float64) - n / 2) * scale
    return x.to(dtype)


def all_dtypes():
    t = {}
    ints = {"U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
            "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64}
    for name, dt in ints.items():
        lo = 0 if name.startswith("U") else -7
        t[f"int.{name.lower()}"] = torch.arange(lo, lo + 15).to(dt).reshape(3, 5)
    t["int.bool"] = (torch.arange(12) % 3 == 0).reshape(2, 2, 3)
    for name, dt in {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                     "F64": torch.float64}.items():
        t[f"float.{name.lower()}"] = seq(15, dt).reshape(5, 3)
    t["float.f8_e4m3"] = seq(8, torch.float32).to(torch.float8_e4m3fn).reshape(2, 4)
    t["float.f8_e5m2"] = seq(8, torch.float32).to(torch.float8_e5m2).reshape(4, 2)
    t["float.specials"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    # scalars and zero-element tensors
    t["scalar.f32"] = torch.tensor(3.25, dtype=torch.float32)
    t["scalar.i64"] = torch.tensor(-42, dtype=torch.int64)
    t["scalar.bool"] = torch.tensor(True)
    t["empty.bf16"] = torch.zeros(0, dtype=torch.bfloat16)
    t["empty.f32"] = torch.zeros(4, 0, 3, dtype=torch.float32)
    t["empty.u8"] = torch.zeros(0, 0, dtype=torch.uint8)
    # names serde_json has to escape, and UTF-8 it must not
    t['odd."quote"\\back/slash'] = torch.tensor([1, 2], dtype=torch.int16)
    t["odd.\x01ctl\ttab\nnl"] = torch.tensor([3], dtype=torch.int16)
    t["odd.caf\u00e9.\u2713.\U0001F600"] = torch.tensor([4, 5, 6], dtype=torch.int16)
    return t


def new_dtypes():
    t = {"new.f8_e8m0": torch.tensor([1.0, 2.0, 0.5, 8.0]).to(torch.float8_e8m0fnu),
         "new.f8_e4m3fnuz": seq(6, torch.float32).to(torch.float8_e4m3fnuz),
         "new.f8_e5m2fnuz": seq(6, torch.float32).to(torch.float8_e5m2fnuz),
         "new.c64": torch.tensor([1 + 2j, -3.5 + 0.25j], dtype=torch.complex64)}
    if hasattr(torch, "float4_e2m1fn_x2"):
        t["new.f4"] = torch.arange(6, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).reshape(2, 3)
    return t


def sharded_state():
    # insertion order matters (it is the sharding order), so it is recorded in expected.json
    sd = {}
    sd["proj_in.weight"] = seq(24, torch.bfloat16).reshape(4, 6)     # 48 B
    sd["proj_in.bias"] = seq(4, torch.float32)                       # 16 B
    sd["blocks.0.attn.to_q.weight"] = seq(40, torch.bfloat16).reshape(8, 5)  # 80 B
    sd["blocks.0.big"] = seq(64, torch.float32).reshape(8, 8)        # 256 B > 200 B: own shard
    sd["blocks.0.norm.scale"] = seq(16, torch.float32)               # 64 B
    sd["blocks.1.attn.to_q.weight"] = seq(40, torch.float16).reshape(5, 8)   # 80 B
    sd["blocks.1.caf\u00e9\U0001F600"] = torch.arange(10, dtype=torch.int64)  # 80 B
    sd["blocks.1.empty"] = torch.zeros(0, 7, dtype=torch.bfloat16)
    sd["proj_out.weight"] = seq(30, torch.float32).reshape(3, 10)    # 120 B
    sd["zz.scalar"] = torch.tensor(1.5, dtype=torch.float64)
    return sd


def save_like_diffusers(sd, directory):
    os.makedirs(directory, exist_ok=True)
    for f in os.listdir(directory):
        os.remove(os.path.join(directory, f))
    split = split_torch_state_dict_into_shards(
        sd, max_shard_size=SHARD_SIZE, filename_pattern=PREFIX + "{suffix}.safetensors")
    for filename, names in split.filename_to_tensors.items():
        save_file({n: sd[n].contiguous() for n in names}, os.path.join(directory, filename),
                  metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        with open(os.path.join(directory, PREFIX + ".safetensors.index.json"), "w",
                  encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return split


def describe(t: torch.Tensor, st_dtype: str, shape):
    b = raw(t)
    # shape as the header says it (F4 packs two values a byte: the header counts values)
    d = {"dtype": st_dtype, "shape": list(shape), "nbytes": len(b), "fnv1a64": fnv1a64(b),
         "head": b[:16].hex()}
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and t.numel():
        vals = t.reshape(-1)[:4].to(torch.float64).tolist()
        d["values"] = [v if v == v and abs(v) != float("inf") else str(v) for v in vals]
    return d


def describe_file(path):
    out = {}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():
            sl = f.get_slice(name)
            out[name] = describe(f.get_tensor(name), sl.get_dtype(), sl.get_shape())
    return {"metadata": meta, "tensors": out}


def qie_pattern(i, n):
    return bytes(((31 * k + 7 * i + 3) & 0xFF) for k in range(n))


def check_qie_written():
    """qie's sharded output must load with the Python package and follow hub conventions."""
    d = os.path.join(OUT, "qie_written")
    if not os.path.isdir(d):
        print("qie_written/ missing: run QIE_REGEN_GOLDEN=1 build/tests/test_safetensors")
        return False
    spec = json.load(open(os.path.join(d, "spec.json")))
    index_path = os.path.join(d, spec["prefix"] + ".safetensors.index.json")
    text = open(index_path, encoding="utf-8").read()
    index = json.loads(text)
    # byte-exact with what diffusers would have written for this index
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n", "index formatting"
    wm = index["weight_map"]
    files = sorted(set(wm.values()))
    n = len(files)
    assert files == [f"{spec['prefix']}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    total = 0
    seen = set()
    for fn in files:
        path = os.path.join(d, fn)
        sd = load_file(path)
        with safe_open(path, framework="pt") as f:
            assert f.metadata() == spec["metadata"], (f.metadata(), spec["metadata"])
        with open(path, "rb") as f:
            nhdr = int.from_bytes(f.read(8), "little")
        assert nhdr % 8 == 0
        for name, t in sd.items():
            assert wm[name] == fn, name
            seen.add(name)
            total += len(raw(t))
    assert seen == set(wm), "weight_map and shards disagree"
    assert index["metadata"]["total_size"] == total
    for i, e in enumerate(spec["tensors"]):
        t = load_file(os.path.join(d, wm[e["name"]]))[e["name"]]
        assert list(t.shape) == e["shape"], e["name"]
        b = raw(t)
        want = qie_pattern(i, len(b))
        if t.dtype == torch.bool:  # the C test keeps bools 0/1
            want = bytes(x & 1 for x in want)
        assert b == want, e["name"]
        assert str(t.dtype) == e["torch_dtype"], (e["name"], t.dtype)
    # and the hub's own splitter, fed the same tensors in the same order, makes the same plan
    sd = {e["name"]: load_file(os.path.join(d, wm[e["name"]]))[e["name"]] for e in spec["tensors"]}
    split = split_torch_state_dict_into_shards(
        sd, max_shard_size=spec["max_shard_size"], filename_pattern=spec["prefix"] + "{suffix}.safetensors")
    assert split.tensor_to_filename == wm, "hub would shard differently"
    print(f"qie_written/: {len(wm)} tensors in {n} shards load with safetensors "
          f"{__import__('safetensors').__version__}; index matches hub conventions")
    return True


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"files": {}}
    for fn, tensors in (("all_dtypes.safetensors", all_dtypes()),
                        ("new_dtypes.safetensors", new_dtypes())):
        save_file(tensors, os.path.join(OUT, fn), metadata={"format": "pt"})
        expected["files"][fn] = describe_file(os.path.join(OUT, fn))
    sd = sharded_state()
    split = save_like_diffusers(sd, os.path.join(OUT, "sharded"))
    expected["sharded"] = {"dir": "sharded", "prefix": PREFIX, "max_shard_size": SHARD_SIZE,
                           "order": list(sd.keys()), "nshards": len(split.filename_to_tensors),
                           "files": sorted(os.listdir(os.path.join(OUT, "sharded")))}
    for fn in split.filename_to_tensors:
        expected["files"]["sharded/" + fn] = describe_file(os.path.join(OUT, "sharded", fn))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {sum(len(v['tensors']) for v in expected['files'].values())} tensors, "
          f"{expected['sharded']['nshards']} shards")
    ok = check_qie_written()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
