#!/usr/bin/env python3
"""vae.py: golden files for the VAE encoder (common/vae*.c, tests/test_vae.c, tests/gpu/test_vae_gpu.c).

Builds the `vae-tiny` config of spec/model.md section 5.3 (base_dim 8, dim_mult 1,2,4,4, z_dim 16,
one res block per level, temperal_downsample F,T,T, the real latents_mean/std) as diffusers'
AutoencoderKLQwenImage with seeded random weights, and writes into tests/golden/vae/:

  model/vae/config.json                          the model's config (save_pretrained's)
  model/vae/diffusion_pytorch_model.safetensors  encoder.* and quant_conv.* only, bf16 (the
                                                 released dtype; ~0.55 MB). The decoder is left out
                                                 to keep the fixture small: qie reads only the
                                                 encoder, and this file is not meant for
                                                 from_pretrained.
  vae_h40_w24.safetensors, vae_h24_w56.safetensors
      pixels   f32 [2,3,H,W] uniform in [-1,1]        (qie-parity vae's input)
      mean     f32 [2,16,1,H/8,W/8]                    latent_dist.mean
      logvar   f32 [2,16,1,H/8,W/8]                    latent_dist.logvar (clamped to [-30, 20])
      latents  f32 [2,16,1,H/8,W/8]                    (mean - latents_mean) / latents_std
      inter.conv_in, inter.down.<i>, inter.mid, inter.enc_out, inter.quant_conv
               f32 [2,C,h,w]: module outputs (frame axis dropped) for localising a mismatch

The reference runs in float32 on the CPU on the bf16-rounded weights upcast to float32, through
the real 3-D causal path (model.encode on [B,3,1,H,W]), so the C test also checks the 2-D
reduction of spec 2.4. Sizes are odd multiples of 8, so the last levels have odd sides.

Run from the repository root: python3 scripts/golden/vae.py
Needs torch, diffusers, safetensors.
"""
import json
import os

import torch
import diffusers
from diffusers import AutoencoderKLQwenImage
from safetensors.torch import save_file

OUT = "tests/golden/vae"
SIZES = [(40, 24), (24, 56)]
BATCH = 2


def tiny_model():
    torch.manual_seed(20250901)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 attn_scales=[], temperal_downsample=[False, True, True])
    # Default init leaves gammas at 1 and biases near 0: randomise every tensor so that each
    # weight matters (gamma around 1, biases of order 0.1, conv weights kept at their init scale).
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                if p.dim() == 5:  # causal 3-D conv: only the last temporal tap acts on stills
                    fan_in //= p.shape[2]
                p.copy_(torch.randn_like(p) * (1.0 / fan_in) ** 0.5)
            # round to bf16 so the saved file and the fp32 reference hold the same values
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return vae.eval()


def main():
    os.makedirs(f"{OUT}/model/vae", exist_ok=True)
    vae = tiny_model()
    with open(f"{OUT}/model/vae/config.json", "w") as f:
        cfg = dict(vae.config)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        cfg["_class_name"] = "AutoencoderKLQwenImage"
        cfg["_diffusers_version"] = diffusers.__version__
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in vae.state_dict().items()
          if k.startswith("encoder.") or k.startswith("quant_conv.")}
    save_file(sd, f"{OUT}/model/vae/diffusion_pytorch_model.safetensors", metadata={"format": "pt"})

    inter = {}

    def hook(name):
        def fn(_m, _i, out):
            inter[name] = out.detach()[:, :, 0].float().clone()
        return fn

    enc = vae.encoder
    enc.conv_in.register_forward_hook(hook("conv_in"))
    for i, blk in enumerate(enc.down_blocks):
        blk.register_forward_hook(hook(f"down.{i}"))
    enc.mid_block.register_forward_hook(hook("mid"))
    enc.register_forward_hook(hook("enc_out"))
    vae.quant_conv.register_forward_hook(hook("quant_conv"))

    mean_t = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std_t = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    gen = torch.Generator().manual_seed(7)
    for (h, w) in SIZES:
        pixels = torch.rand(BATCH, 3, h, w, generator=gen) * 2 - 1
        inter.clear()
        with torch.no_grad():
            dist = vae.encode(pixels.unsqueeze(2)).latent_dist
        out = {
            "pixels": pixels.contiguous(),
            "mean": dist.mean.contiguous(),
            "logvar": dist.logvar.contiguous(),
            "latents": ((dist.mean - mean_t) / std_t).contiguous(),
        }
        for k, v in inter.items():
            out[f"inter.{k}"] = v.contiguous()
        meta = {"format": "pt", "diffusers": diffusers.__version__, "torch": torch.__version__,
                "config": "vae-tiny", "size": f"{h}x{w}"}
        save_file(out, f"{OUT}/vae_h{h}_w{w}.safetensors", metadata=meta)
        print(f"vae_h{h}_w{w}: mean |mean| {dist.mean.abs().mean():.4f}, logvar range "
              f"[{dist.logvar.min():.3f}, {dist.logvar.max():.3f}], {len(inter)} intermediates")


if __name__ == "__main__":
    main()
