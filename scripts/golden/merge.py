#!/usr/bin/env python3
"""merge.py: golden files for qie-merge (common/ckpt_shard.c ckpt_merge, tests/t_merge.sh).

Writes a qie sharded checkpoint with an independent writer that follows docs/distributed.md
("Sharded checkpoints") and nothing else, so the C reader is checked against the document:

  tests/golden/merge/checkpoint/      rank-0000r-of-00003.safetensors (master only: a weights-only
                                      checkpoint), layout.json, config.json of a tiny random
                                      QwenImageTransformer2DModel. The layout is NOT qie's: tensors
                                      in state_dict order, 8-element alignment, and every rank
                                      holds two interleaved segments (the reader must follow the
                                      file, not assume ZeRO-2 or qie's padding).
  tests/golden/merge/expect.safetensors          the state dict as torch casts it: .to(bfloat16)
  tests/golden/merge/expect.index.json           the index ModelMixin.save_pretrained writes for
                                                 max_shard_size="20KB" (huggingface's splitter)

Then, when a qie-merge binary is found ($QIE_BIN or build/bin), the fixture-time check: merge the
checkpoint, load the result with QwenImageTransformer2DModel.from_pretrained, and require every
parameter to equal torch's bf16 cast exactly, and the index to equal save_pretrained's byte for byte.

Run from the repository root: python3 scripts/golden/merge.py   (needs torch, diffusers, safetensors)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from safetensors.torch import save_file

OUT = "tests/golden/merge"
WORLD = 3
ALIGN = 8
SHARD = "20KB"


def fnv1a64(text):
    h = 0xcbf29ce484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    torch.manual_seed(20251126)
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                    attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                    axes_dims_rope=(2, 2, 4))
    with torch.no_grad():
        for p in m.parameters():   # fp32 values that bf16 must round (not already representable)
            p.copy_(torch.randn_like(p) * 0.05)
    sd = {k: v.detach().float().contiguous() for k, v in m.state_dict().items()}

    # layout: state_dict order, 8-element alignment
    tensors, off = [], 0
    for name, t in sd.items():
        off = (off + ALIGN - 1) // ALIGN * ALIGN
        tensors.append({"name": name, "offset": off, "shape": list(t.shape)})
        off += t.numel()
    n = (off + 2 * WORLD - 1) // (2 * WORLD) * (2 * WORLD)
    flat = torch.zeros(n, dtype=torch.float32)
    for t in tensors:
        flat[t["offset"]:t["offset"] + sd[t["name"]].numel()] = sd[t["name"]].flatten()
    text = "".join(f"{t['name']}\t{t['offset']}\t{'x'.join(str(d) for d in t['shape'])}\n" for t in tensors)
    names_hash = f"{fnv1a64(text + f'num_params={n}' + chr(10)):016x}"

    shutil.rmtree(OUT, ignore_errors=True)
    ck = os.path.join(OUT, "checkpoint")
    os.makedirs(ck)
    layout = {"format": "qie-zero/1", "num_params": n, "names_hash": names_hash, "tensors": tensors}
    with open(os.path.join(ck, "layout.json"), "w") as f:
        json.dump(layout, f, indent=1)
    m.save_config(ck)   # config.json as save_pretrained writes it

    # rank r: [r·n/2W, (r+1)·n/2W) and the same in the second half
    half = n // 2
    for r in range(WORLD):
        segs = [(r * half // WORLD, (r + 1) * half // WORLD), (half + r * half // WORLD, half + (r + 1) * half // WORLD)]
        part = torch.cat([flat[a:b] for a, b in segs])
        meta = {"format": "pt", "qie_format": "qie-zero/1", "world": str(WORLD), "rank": str(r), "num_params": str(n),
                "names_hash": names_hash, "segments": ",".join(f"{a}-{b}" for a, b in segs), "step": "5"}
        save_file({"master": part}, os.path.join(ck, f"rank-{r:05d}-of-{WORLD:05d}.safetensors"), metadata=meta)

    expect = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    save_file(expect, os.path.join(OUT, "expect.safetensors"), metadata={"format": "pt"})
    with tempfile.TemporaryDirectory() as tmp:
        m.to(torch.bfloat16).save_pretrained(tmp, max_shard_size=SHARD)
        shutil.copy(os.path.join(tmp, "diffusion_pytorch_model.safetensors.index.json"),
                    os.path.join(OUT, "expect.index.json"))
    print(f"wrote {OUT}: {len(tensors)} tensors, {n} elements, world {WORLD}")

    # fixture-time check with the real loader
    qie_bin = os.environ.get("QIE_BIN", "build/bin")
    merge = os.path.join(qie_bin, "qie-merge")
    if not os.path.exists(merge):
        print(f"{merge} not built: skipping the from_pretrained check")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        subprocess.run([merge, ck, out, "--max_shard_size", SHARD, "--log_level", "warn"], check=True)
        got = QwenImageTransformer2DModel.from_pretrained(out, torch_dtype=torch.bfloat16).state_dict()
        bad = [k for k in expect if not torch.equal(got[k], expect[k])]
        same_index = open(os.path.join(out, "diffusion_pytorch_model.safetensors.index.json")).read() == \
            open(os.path.join(OUT, "expect.index.json")).read()
        nshards = len([f for f in os.listdir(out) if f.endswith(".safetensors")])
    print(f"from_pretrained of qie-merge's output ({nshards} shards): "
          f"{'OK' if not bad else 'NOT OK ' + ', '.join(bad[:5])}; index {'OK' if same_index else 'NOT OK'}")
    return 0 if not bad and same_index and len(got) == len(expect) else 1


if __name__ == "__main__":
    sys.exit(main())
