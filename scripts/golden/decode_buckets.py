#!/usr/bin/env python3
"""decode_buckets.py: golden fixtures for qie-decode's size arithmetic and one end-to-end pixel
check, computed the way VideoX-Fun's edit trainer computes them.

Reference: aigc-apps/VideoX-Fun, scripts/qwenimage/train_edit.py (collate_fn: get_random_
downsample_ratio, aspect_ratio_sample_size, get_closest_ratio, the resize/CenterCrop/Normalize
transform; training step: PREFERRED_QWENIMAGE_RESOLUTIONS for qwen_image_edit with qie's
true-aspect-ratio fix from decisions.md, calculate_dimensions for qwen_image_edit_plus) and
videox_fun/data/bucket_sampler.py (ASPECT_RATIO_512, get_closest_ratio). The code below copies
those expressions; only the loops around them are new.

Writes (all small):
  tests/golden/decode/buckets/targets.json   rows [h, w, S, d, bh, bw, rh, rw, top, left]
  tests/golden/decode/buckets/sources.json   rows [W, H, v1w, v1h, vae_w, vae_h, cond_w, cond_h]
  tests/golden/decode/buckets/hw_choice.json rows [S, u, d]  (numpy choice given its uniform)
  tests/golden/decode/buckets/e2e/            two PNG entries, metadata, draws and expectations

Run from the repository root: python3 scripts/golden/decode_buckets.py
Needs numpy, Pillow, torch (torchvision is not needed: its Resize on a float tensor is
torch.nn.functional.interpolate(bilinear, align_corners=False, antialias=True), and CenterCrop
and Normalize are written out below exactly as torchvision computes them).
"""
import hashlib
import json
import math
import os
import struct

import numpy as np

ASPECT_RATIO_512 = {
    '0.25': [256.0, 1024.0], '0.26': [256.0, 992.0], '0.27': [256.0, 960.0], '0.28': [256.0, 928.0],
    '0.32': [288.0, 896.0], '0.33': [288.0, 864.0], '0.35': [288.0, 832.0], '0.4': [320.0, 800.0],
    '0.42': [320.0, 768.0], '0.48': [352.0, 736.0], '0.5': [352.0, 704.0], '0.52': [352.0, 672.0],
    '0.57': [384.0, 672.0], '0.6': [384.0, 640.0], '0.68': [416.0, 608.0], '0.72': [416.0, 576.0],
    '0.78': [448.0, 576.0], '0.82': [448.0, 544.0], '0.88': [480.0, 544.0], '0.94': [480.0, 512.0],
    '1.0': [512.0, 512.0], '1.07': [512.0, 480.0], '1.13': [544.0, 480.0], '1.21': [544.0, 448.0],
    '1.29': [576.0, 448.0], '1.38': [576.0, 416.0], '1.46': [608.0, 416.0], '1.67': [640.0, 384.0],
    '1.75': [672.0, 384.0], '2.0': [704.0, 352.0], '2.09': [736.0, 352.0], '2.4': [768.0, 320.0],
    '2.5': [800.0, 320.0], '2.89': [832.0, 288.0], '3.0': [864.0, 288.0], '3.11': [896.0, 288.0],
    '3.62': [928.0, 256.0], '3.75': [960.0, 256.0], '3.88': [992.0, 256.0], '4.0': [1024.0, 256.0]
}

PREFERRED_QWENIMAGE_RESOLUTIONS = [
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
]
VAE_IMAGE_SIZE = 1024 * 1024
CONDITION_IMAGE_SIZE = 384 * 384
OUT = "tests/golden/decode"


def get_closest_ratio(height, width, ratios=ASPECT_RATIO_512):
    aspect_ratio = height / width
    closest_ratio = min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))
    return ratios[closest_ratio], float(closest_ratio)


def calculate_dimensions(target_area, ratio):
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    width = round(width / 32) * 32
    height = round(height / 32) * 32
    return width, height


def hw_number_list(sample_size, image_ratio=[]):
    def _create_special_list(length):
        if length == 1:
            return [1.0]
        if length >= 2:
            first_element = 0.90
            remaining_sum = 1.0 - first_element
            other_elements_value = remaining_sum / (length - 1)
            return [first_element] + [other_elements_value] * (length - 1)
    if sample_size >= 1536:
        number_list = [1, 1.25, 1.5, 2, 2.5, 3] + image_ratio
    elif sample_size >= 1024:
        number_list = [1, 1.25, 1.5, 2] + image_ratio
    elif sample_size >= 768:
        number_list = [1, 1.25, 1.5] + image_ratio
    elif sample_size >= 512:
        number_list = [1] + image_ratio
    else:
        number_list = [1]
    return number_list, np.array(_create_special_list(len(number_list)))


def target_plan(h, w, sample_size, d):
    """collate_fn, default (bucket) branch, for one example."""
    aspect_ratio_sample_size = {key: [x / 512 * sample_size / d for x in ASPECT_RATIO_512[key]]
                                for key in ASPECT_RATIO_512.keys()}
    closest_size, closest_ratio = get_closest_ratio(h, w, ratios=aspect_ratio_sample_size)
    closest_size = [int(x / 16) * 16 for x in closest_size]
    closest_size = list(map(lambda x: int(x), closest_size))
    if closest_size[0] / h > closest_size[1] / w:
        resize_size = closest_size[0], int(w * closest_size[0] / h)
    else:
        resize_size = int(h * closest_size[1] / w), closest_size[1]
    # torchvision CenterCrop (functional.center_crop)
    top = int(round((resize_size[0] - closest_size[0]) / 2.0))
    left = int(round((resize_size[1] - closest_size[1]) / 2.0))
    return closest_size, resize_size, (top, left)


def v1_source_size(W, H):
    """training step, qwen_image_edit, with the (height, width) = true image size fix."""
    aspect_ratio = W / H
    _, sw, sh = min((abs(aspect_ratio - w / h), w, h) for w, h in PREFERRED_QWENIMAGE_RESOLUTIONS)
    multiple_of = 16
    return sw // multiple_of * multiple_of, sh // multiple_of * multiple_of


def size_pairs(rng):
    pairs = set()
    for s in [1, 2, 3, 15, 16, 17, 31, 64, 100, 255, 256, 511, 512, 513, 767, 1000, 1023, 1024,
              1025, 1328, 1500, 2048, 4095, 4096]:
        pairs.add((s, s))
    extremes = [(1, 1), (1, 2), (2, 1), (1, 10000), (10000, 1), (3, 7919), (7919, 3),
                (64, 8192), (8192, 64), (1, 4), (4, 1), (100, 400), (400, 100), (99, 401),
                (1000, 3990), (3990, 1000), (1024, 256), (256, 1024), (720, 1280), (1280, 720),
                (1080, 1920), (1920, 1080), (3000, 4000), (4000, 3000), (2448, 3264),
                (3264, 2448), (6000, 4000), (4000, 6000), (512, 1000), (1000, 512)]
    pairs.update(extremes)
    # ratios on and around every key boundary: midpoints between consecutive keys
    keys = [float(k) for k in ASPECT_RATIO_512]
    for a, b in zip(keys, keys[1:]):
        mid = (a + b) / 2
        for w in (1000, 999):
            for dh in (-1, 0, 1):
                h = int(round(mid * w)) + dh
                if h > 0:
                    pairs.add((h, w))
    while len(pairs) < 300:
        h = int(rng.integers(1, 5000))
        w = int(rng.integers(1, 5000))
        pairs.add((h, w))
    return sorted(pairs)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        # one row per line: small diffs when the fixture is regenerated
        f.write("[\n" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in obj) + "\n]\n")


def gen_buckets():
    rng = np.random.default_rng(20260513)
    pairs = size_pairs(rng)
    rows = []
    for i, (h, w) in enumerate(pairs):
        for S in (512, 768, 1024, 1328):
            choices, _ = hw_number_list(S)
            ds = [1]
            if S >= 1024:   # S=768's choices are covered by S=1024's first three
                ds.append(choices[1 + (i + S) % (len(choices) - 1)])
            for d in ds:
                d = float(np.float64(d))  # np.random.choice returns numpy float64
                cs, rs, (top, left) = target_plan(h, w, S, d)
                rows.append([h, w, S, d, cs[0], cs[1], rs[0], rs[1], top, left])
    write_json(f"{OUT}/buckets/targets.json", rows)

    srows = []
    for (h, w) in pairs:
        W, H = w, h
        v1w, v1h = v1_source_size(W, H)
        vw, vh = calculate_dimensions(VAE_IMAGE_SIZE, W / H)
        cw, ch = calculate_dimensions(CONDITION_IMAGE_SIZE, W / H)
        srows.append([W, H, v1w, v1h, vw, vh, cw, ch])
    write_json(f"{OUT}/buckets/sources.json", srows)

    crows = []
    for S in (256, 512, 768, 1024, 1328, 1536, 2048):
        number_list, p = hw_number_list(S)
        rs = np.random.RandomState(S)
        for _ in range(40):
            st = rs.get_state()
            u = rs.random_sample()
            rs.set_state(st)
            d = rs.choice(number_list, p=p)   # consumes the same single uniform
            crows.append([S, u, float(d)])
        # the cdf edges themselves
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        for c in cdf[:-1]:
            for u in (np.nextafter(c, 0), c):
                idx = cdf.searchsorted(u, side="right")
                crows.append([S, float(u), float(number_list[idx])])
    write_json(f"{OUT}/buckets/hw_choice.json", crows)
    print(f"targets {len(rows)} rows, sources {len(srows)} rows, hw choices {len(crows)} rows")


# ---------------------------------------------------------------------------------------------
# end to end: two entries through the reference pixel path

def safetensors_write(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = arr.tobytes()
        dt = {np.dtype("float64"): "F64", np.dtype("float32"): "F32"}[arr.dtype]
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def pattern(h, w, seed):
    """smooth gradients plus noise: exercises both the filters and the clipping"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1),
                     127.5 + 127.5 * np.sin((x + y) / 5.0)], axis=-1)
    img = base + rng.normal(0, 10, size=base.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def ref_target(path, S, d):
    import torch
    import torch.nn.functional as F
    from PIL import Image
    arr = np.array(Image.open(path).convert("RGB"))[None]          # [1, H, W, 3] u8
    _, h, w, _ = arr.shape
    pv = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    pv = pv / 255.
    cs, rs, (top, left) = target_plan(h, w, S, d)
    if list(rs) != [h, w]:   # torchvision.transforms.functional.resize returns img unchanged
        pv = F.interpolate(pv, size=list(rs), mode="bilinear", align_corners=False, antialias=True)
    pv = pv[..., top:top + cs[0], left:left + cs[1]]
    mean = torch.as_tensor([0.5, 0.5, 0.5], dtype=pv.dtype).view(-1, 1, 1)
    std = torch.as_tensor([0.5, 0.5, 0.5], dtype=pv.dtype).view(-1, 1, 1)
    pv = pv.sub_(mean).div_(std)                                    # Normalize(inplace=True)
    return pv[0].to(torch.bfloat16), cs


def gen_e2e():
    import torch
    from PIL import Image
    d_out = f"{OUT}/buckets/e2e"
    os.makedirs(d_out, exist_ok=True)
    # target A: downscale with antialias (odd sizes, crop offset), target B: upscale
    imgs = {"a_target.png": pattern(90, 121, 1), "a_src.png": pattern(70, 97, 2),
            "b_target.png": pattern(23, 41, 3), "b_src0.png": pattern(40, 31, 4),
            "b_src1.png": pattern(64, 64, 5)}
    for n, a in imgs.items():
        Image.fromarray(a).save(f"{d_out}/{n}")
    meta = [
        {"file_path": "a_target.png", "text": "make it blue", "source_file_path": "a_src.png",
         "type": "image"},
        {"file_path": "b_target.png", "text": "combine", "source_file_path": ["b_src0.png", "b_src1.png"]},
    ]
    with open(f"{d_out}/metadata.json", "w") as f:
        json.dump(meta, f, indent=2)
    S = 64
    # S < 512 has the single choice d = 1; the file still goes through the injection path
    draws = np.array([1.0, 1.0], dtype=np.float64)
    safetensors_write(f"{d_out}/hw_draws.safetensors", {"random_hw_adapt": draws})
    expect = {"S": S, "entries": []}
    for i, e in enumerate(meta):
        tgt, cs = ref_target(f"{d_out}/{e['file_path']}", S, float(draws[i]))
        raw = tgt.view(torch.int16).numpy().astype("<i2").tobytes()
        fn = f"target_{i}.bf16"
        with open(f"{d_out}/{fn}", "wb") as f:
            f.write(raw)
        srcs = e["source_file_path"]
        srcs = [srcs] if isinstance(srcs, str) else srcs
        ent = {"bucket": cs, "target": fn, "sources_v1": [], "sources_plus": []}
        for s in srcs:
            im = Image.open(f"{d_out}/{s}").convert("RGB")
            W, H = im.size
            vw, vh = v1_source_size(W, H)
            v1 = np.array(im.resize((vw, vh), resample=Image.LANCZOS))
            ent["sources_v1"].append({"w": vw, "h": vh, "sha256": hashlib.sha256(v1.tobytes()).hexdigest()})
            pw, ph = calculate_dimensions(VAE_IMAGE_SIZE, W / H)
            cw, ch = calculate_dimensions(CONDITION_IMAGE_SIZE, W / H)
            pv = np.array(im.resize((pw, ph), resample=Image.LANCZOS))
            pc = np.array(im.resize((cw, ch), resample=Image.LANCZOS))
            ent["sources_plus"].append({"w": pw, "h": ph, "sha256": hashlib.sha256(pv.tobytes()).hexdigest(),
                                        "cond_w": cw, "cond_h": ch,
                                        "cond_sha256": hashlib.sha256(pc.tobytes()).hexdigest()})
        expect["entries"].append(ent)
    with open(f"{d_out}/expect.json", "w") as f:
        json.dump(expect, f, indent=1)
    print("e2e fixtures written")


if __name__ == "__main__":
    gen_buckets()
    gen_e2e()
