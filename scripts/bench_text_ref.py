#!/usr/bin/env python3
"""bench_text_ref.py: the reference for tests/bench/bench_text.c: prompts/s of diffusers'
QwenImageEditPlusPipeline.encode_prompt with transformers' Qwen2.5-VL at the real 7B dimensions
(random weights, bf16, SDPA attention) on the same work: each prompt with two 384x384 condition
images, the same prompts, the same tokenizer files (tests/golden/text/qwen2_vocab: the real-id
Qwen2 vocabulary slice, which tokenizes the template like the released tokenizer).

The Plus pipeline encodes one prompt per call (its images are shared by the batch), so the
reference runs prompt by prompt, as a training data loader would. Usage (on a GPU host):
    python3 scripts/bench_text_ref.py [--prompts 32] [--iters 3] [--processor pil|fast]
Prints one line per timed run and a final "prompts/s" line (best run)."""
import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

PROMPTS = [
    "Replace the cat with a dog. Change the background to a beach at sunset.",
    "Put the hat from picture 2 on the man in picture 1",
    "把背景换成海滩，保留人物的姿势。",
    "Make the sky purple. 让天空变成紫色。",
    "Remove the text \"SALE 50%\" from the sign, and don't touch the people's faces.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
]
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
         "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
         "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
         "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
         "<|repo_name|>", "<|file_sep|>"]
QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
             r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def tokenizer(d):
    import tokenizers
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    with open(os.path.join(d, "vocab.json")) as f:
        vocab = json.load(f)
    for i, t in enumerate(ADDED):
        vocab[t] = 151643 + i  # real ids: the added tokens take them from the vocabulary map
    merges = [tuple(l.rstrip("\n").split(" ")) for l in open(os.path.join(d, "merges.txt"), encoding="utf-8")
              if l.strip() and not l.startswith("#version")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in ADDED[:14]])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in ADDED[14:]])
    assert tok.token_to_id("<|image_pad|>") == 151655
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")


def processor(tok, kind):
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    kw = dict(do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True,
              image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
              merge_size=2, patch_size=14, temporal_patch_size=2, resample=3,
              size={"longest_edge": 12845056, "shortest_edge": 3136})
    if kind == "fast":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as IP
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as IP
    Qwen2_5_VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    return Qwen2_5_VLProcessor(image_processor=IP(**kw), tokenizer=tok, video_processor=None)


def model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, hidden_act="silu",
                         max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="silu",
                           tokens_per_second=2),
        tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--side", type=int, default=384)
    ap.add_argument("--processor", default="pil", choices=["pil", "fast"])
    ap.add_argument("--tokenizer", default="tests/golden/text/qwen2_vocab")
    a = ap.parse_args()
    from diffusers import QwenImageEditPlusPipeline
    t0 = time.time()
    te = model()
    tok = tokenizer(a.tokenizer)
    proc = processor(tok, a.processor)
    pipe = QwenImageEditPlusPipeline(scheduler=None, vae=None, text_encoder=te, tokenizer=tok, processor=proc,
                                     transformer=None)
    rng = np.random.default_rng(7)
    imgs = [Image.fromarray(rng.integers(0, 256, (a.side, a.side, 3), dtype=np.uint8)) for _ in range(2)]
    print(f"bench_text_ref: torch {torch.__version__}, {torch.cuda.get_device_name()}, model ready in "
          f"{time.time() - t0:.1f} s; {a.prompts} prompts x 2 images {a.side}x{a.side}, processor {a.processor}, sdpa")
    dev = torch.device("cuda")
    best = 1e30
    with torch.no_grad():
        for it in range(-1, a.iters):
            torch.cuda.synchronize()
            ts = time.time()
            for i in range(a.prompts):
                e, m = pipe.encode_prompt(prompt=[PROMPTS[i % len(PROMPTS)]], image=imgs, device=dev)
            torch.cuda.synchronize()
            dt = time.time() - ts
            if it >= 0:
                best = min(best, dt)
                print(f"  run {it}: {dt:.3f} s, {a.prompts / dt:.2f} prompts/s, embeds {tuple(e.shape)}")
    print(f"prompts/s: {a.prompts / best:.2f} (best of {a.iters})")


if __name__ == "__main__":
    main()
