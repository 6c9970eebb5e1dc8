#!/usr/bin/env python3
"""dit.py: golden files for the transformer (common/dit*.c, tests/test_dit.c, qie-parity transformer).

Builds tiny random diffusers QwenImageTransformer2DModel configs (spec/model.md section 5: any
H x d with sum(axes_dims_rope) = d, in = 4 * out, >= 2 layers), runs them in fp32 on the CPU with
autograd and writes, for each config NAME:

  tests/golden/dit/NAME/transformer/   the model as ModelMixin.save_pretrained writes it
                                       (config.json + safetensors; one config sharded with an
                                       index and stored in bf16, to exercise the loader)
  tests/golden/dit/NAME.safetensors    inputs, output and gradients, named as qie-parity
                                       transformer names them (stages/parity/parity.h):
      hidden_states [B,S_img,C]  encoder_hidden_states [B,S_txt,J]  encoder_hidden_states_mask
      [B,S_txt] (f32 0/1)  timestep [B]  img_shapes (i64 [B,N_img,3])  grad_output [B,S_img,C_out]
      output  grad.<diffusers name> (every parameter)  grad.hidden_states  grad.encoder_hidden_states
    gradients are of sum(output * grad_output); everything f32.

Configs (both batch 2 with a padded text mask, so the key mask matters):
  ut1  2 layers, 2 heads x 16, axes 4/6/6, J 24, in 16 / out 4; target 3x4 + one 2x2 source;
       zero_cond_t false; single f32 file.
  zc2  3 layers, same widths; target 2x3 + sources 3x2 and 2x2; zero_cond_t true (Edit-2511);
       weights stored bf16 (the reference then computes in fp32 with the bf16-rounded weights),
       sharded with max_shard_size 100KB.

Run from the repository root: python3 scripts/golden/dit.py   (needs torch, diffusers, safetensors)
"""
import json
import os
import shutil

import diffusers
import torch
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from safetensors.torch import save_file

OUT = "tests/golden/dit"

CONFIGS = {
    "ut1": dict(layers=2, zero_cond_t=False, shapes=[(1, 3, 4), (1, 2, 2)], n_txt=5,
                mask=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], t=[0.98806, 0.5], bf16=False, shard=None),
    "zc2": dict(layers=3, zero_cond_t=True, shapes=[(1, 2, 3), (1, 3, 2), (1, 2, 2)], n_txt=6,
                mask=[[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], t=[1.0, 0.02], bf16=True, shard="100KB"),
}


def build(name, c, seed):
    torch.manual_seed(seed)
    m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=c["layers"],
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                    axes_dims_rope=(4, 6, 6), zero_cond_t=c["zero_cond_t"])
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or ".norm_" in n:   # RMSNorm gains: not all ones, so their
                p.copy_(1 + 0.2 * torch.randn_like(p))       # gradients are exercised
            if c["bf16"]:
                p.copy_(p.to(torch.bfloat16).float())
    m.eval()
    d = os.path.join(OUT, name, "transformer")
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    os.makedirs(d)
    if c["bf16"]:
        m.to(torch.bfloat16).save_pretrained(d, max_shard_size=c["shard"] or "10GB")
        m.float()
    else:
        m.save_pretrained(d, max_shard_size=c["shard"] or "10GB")
    return m


def run(name, c, seed):
    m = build(name, c, seed)
    g = torch.Generator().manual_seed(seed + 1)
    B = 2
    s_img = sum(f * h * w for f, h, w in c["shapes"])
    x = torch.randn(B, s_img, 16, generator=g, requires_grad=True)
    e = torch.randn(B, c["n_txt"], 24, generator=g, requires_grad=True)
    mask = torch.tensor(c["mask"], dtype=torch.float32)
    t = torch.tensor(c["t"], dtype=torch.float32)
    shapes = [list(c["shapes"])] * B
    out = m(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=mask, timestep=t,
            img_shapes=shapes, return_dict=False)[0]
    go = torch.randn(out.shape, generator=g)
    (out * go).sum().backward()
    t_out = {
        "hidden_states": x.detach(), "encoder_hidden_states": e.detach(), "encoder_hidden_states_mask": mask,
        "timestep": t, "img_shapes": torch.tensor(shapes, dtype=torch.int64), "grad_output": go,
        "output": out.detach(), "grad.hidden_states": x.grad, "grad.encoder_hidden_states": e.grad,
    }
    for n, p in m.named_parameters():
        t_out["grad." + n] = p.grad if p.grad is not None else torch.zeros_like(p)
    t_out = {k: v.contiguous() for k, v in t_out.items()}
    save_file(t_out, os.path.join(OUT, name + ".safetensors"),
              metadata={"format": "pt", "diffusers": diffusers.__version__, "torch": torch.__version__,
                        "config": json.dumps(c)})
    print(f"{name}: {sum(p.numel() for p in m.parameters())} params, S_img {s_img}, "
          f"output |max| {out.abs().max():.3g}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for i, (name, c) in enumerate(CONFIGS.items()):
        run(name, c, 1234 + 10 * i)
