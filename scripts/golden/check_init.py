#!/usr/bin/env python3
"""check_init.py MODEL_DIR: proves that a qie-init model loads in the reference libraries
(dev-time only; CI uses tests/t_init.sh, which loads it with qie's own C loaders).

  qie-init --out /tmp/qie-tiny --variant edit-2509 && python3 scripts/golden/check_init.py /tmp/qie-tiny

Checks, each strict (no missing or unexpected weights, which from_pretrained would otherwise only
warn about and re-initialise):
  transformer   QwenImageTransformer2DModel.from_pretrained, output_loading_info; one forward
  vae           AutoencoderKLQwenImage.from_pretrained (encoder AND decoder); encode + decode
  text_encoder  Qwen2_5_VLForConditionalGeneration.from_pretrained; one forward on a chat prompt
  tokenizer     Qwen2Tokenizer (and AutoTokenizer) from tokenizer/: special tokens at the config's ids,
                byte-level round trip of a multilingual string
  processor     Qwen2VLProcessor from processor/ (image -> pixel_values, image_grid_thw)
  pipeline      DiffusionPipeline.from_pretrained (model_index.json) builds every component
Prints one line per check and exits non-zero on the first failure."""
import json
import os
import sys

import numpy as np
import torch


def ok(what, msg=""):
    print(f"ok   {what} {msg}".rstrip())


def strict(info, what):
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise SystemExit(f"FAIL {what}: {bad}")


def load_processor(d, improc, tok):
    """Qwen2VLProcessor from processor/. Without torchvision, transformers 5 cannot build the
    video half of it (Qwen2VLVideoProcessor); the image half and the tokenizer are what the
    pipelines use, so the processor is then assembled from those two, and the pipeline check
    gets it passed in."""
    from transformers import Qwen2VLProcessor
    try:
        return Qwen2VLProcessor.from_pretrained(os.path.join(d, "processor"))
    except ImportError as e:
        print(f"note processor: {str(e).strip().splitlines()[0]} -> assembled from its image processor + tokenizer")
        p = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
        p.image_processor, p.tokenizer, p.video_processor = improc, tok, None
        p.image_token, p.video_token = "<|image_pad|>", "<|video_pad|>"
        p.image_token_id = tok.convert_tokens_to_ids(p.image_token)
        p.video_token_id = tok.convert_tokens_to_ids(p.video_token)
        p.chat_template = None
        return p


def main(d):
    import diffusers
    import transformers
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")

    t, info = QwenImageTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), output_loading_info=True)
    strict(info, "transformer")
    cfg = t.config
    n = sum(p.numel() for p in t.parameters())
    with torch.no_grad():
        x = torch.randn(1, 4 * 4 + 2 * 2, cfg.in_channels)
        txt = torch.randn(1, 5, cfg.joint_attention_dim)
        out = t(hidden_states=x, encoder_hidden_states=txt, encoder_hidden_states_mask=torch.ones(1, 5),
                timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4), (1, 2, 2)]],
                return_dict=False)[0]
    assert out.shape == (1, 20, cfg.patch_size ** 2 * cfg.out_channels) and torch.isfinite(out).all()
    ok("transformer", f"{n} params, forward {tuple(out.shape)}")

    v, info = AutoencoderKLQwenImage.from_pretrained(os.path.join(d, "vae"), output_loading_info=True)
    strict(info, "vae")
    n = sum(p.numel() for p in v.parameters())
    with torch.no_grad():
        img = torch.rand(1, 3, 1, 32, 48) * 2 - 1
        post = v.encode(img).latent_dist
        rec = v.decode(post.mode()).sample
    assert post.mean.shape == (1, v.config.z_dim, 1, 4, 6) and rec.shape == img.shape and torch.isfinite(rec).all()
    ok("vae", f"{n} params (encoder + decoder), encode {tuple(post.mean.shape)}, decode {tuple(rec.shape)}")

    tok = Qwen2Tokenizer.from_pretrained(os.path.join(d, "tokenizer"))
    te_cfg = json.load(open(os.path.join(d, "text_encoder", "config.json")))
    for name, key in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id"),
                      ("<|vision_end|>", "vision_end_token_id")):
        assert tok.convert_tokens_to_ids(name) == te_cfg[key], (name, tok.convert_tokens_to_ids(name), te_cfg[key])
    s = "Make the sky purple, 让天空变成紫色 😀 <|im_start|>user"
    ids = tok(s, add_special_tokens=False).input_ids
    assert tok.decode(ids) == s, tok.decode(ids)
    from transformers import AutoTokenizer
    fast = AutoTokenizer.from_pretrained(os.path.join(d, "tokenizer"))
    assert fast(s, add_special_tokens=False).input_ids == ids
    ok("tokenizer", f"{len(tok)} ids, {len(ids)} tokens for a {len(s)}-char string, round trip exact, fast == slow")

    te, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(os.path.join(d, "text_encoder"),
                                                                  output_loading_info=True)
    strict(info, "text_encoder")
    n = sum(p.numel() for p in te.parameters())
    from PIL import Image
    from transformers import Qwen2VLImageProcessor
    improc = Qwen2VLImageProcessor.from_pretrained(os.path.join(d, "processor"))
    proc = load_processor(d, improc, tok)
    im = Image.fromarray((np.random.RandomState(0).rand(112, 140, 3) * 255).astype(np.uint8))
    text = ("<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>make it blue<|im_end|>\n"
            "<|im_start|>assistant\n")
    batch = proc(text=[text], images=[im], return_tensors="pt")
    with torch.no_grad():
        hs = te(**batch, output_hidden_states=True).hidden_states[-1]
    assert hs.shape[-1] == te_cfg["text_config"]["hidden_size"] and torch.isfinite(hs).all()
    ok("processor", f"pixel_values {tuple(batch['pixel_values'].shape)}, grid {batch['image_grid_thw'].tolist()}")
    ok("text_encoder", f"{n} params, last hidden state {tuple(hs.shape)}")

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(d, processor=proc, torch_dtype=torch.float32)
    names = sorted(k for k, c in pipe.components.items() if c is not None)
    ok("pipeline", f"{type(pipe).__name__}: {', '.join(names)}")
    with torch.no_grad():
        res = pipe(image=im, prompt="make it blue", negative_prompt=" ", num_inference_steps=2, height=64, width=64,
                   true_cfg_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert res.shape == (1, 64, 64, 3) and np.isfinite(res).all()
    ok("pipeline run", f"2 steps -> image {res.shape[1]}x{res.shape[2]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
