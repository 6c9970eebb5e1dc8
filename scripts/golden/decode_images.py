#!/usr/bin/env python3
"""decode_images.py: golden fixtures for stages/decode (image.c, resample.c).

Writes tests/golden/decode/:
  images/<name>.<ext>    tiny test images (JPEG/PNG/WebP/BMP/GIF/TIFF, good and bad)
  expect/<name>.rgb      PIL Image.open(p).convert('RGB').tobytes()   (H*W*3 u8)
  expect/lz_*.rgb        PIL Image.resize((w, h), Image.LANCZOS) of a decoded source (u8)
  expect/bl_*.f32        torch interpolate(x[None], (h, w), 'bilinear', antialias=True,
                         align_corners=False)[0] with x = u8 CHW float32 / 255 (CHW f32 LE)
  index.json             what each file is, its size, and the versions that made it

Why two interpreters: JPEG and WebP decode are bit-exact only when Pillow links the same
libjpeg-turbo / libwebp as qie (data_pipeline.md §1.4). PyPI Pillow bundles its own, so the PIL
half runs under Debian's python3-pil (/usr/bin/python3: Pillow 9.4.0, system libjpeg-turbo 2.1.5,
libwebp 1.2.4). Debian's python has no torch, so the torch half re-runs this script with
--torch under TORCH_PYTHON (default: `python3` from PATH), reading the u8 sources written by the
first half.

Fixtures committed with this file were made by:
  Pillow 9.4.0 (Debian python3-pil 9.4.0-1.1+deb12u1), libjpeg-turbo 2.1.5 (libjpeg62 API),
  libwebp 1.2.4, torch 2.15.0+cu132 (CPU kernels, capability AVX2), numpy 1.24.2 / 2.4.6.
index.json records the versions of the run that produced it.

Run:  /usr/bin/python3 scripts/golden/decode_images.py   (from the repository root)
"""
import ctypes
import ctypes.util
import io
import json
import os
import struct
import subprocess
import sys
import zlib

OUT = os.path.join("tests", "golden", "decode")
IMG = os.path.join(OUT, "images")
EXP = os.path.join(OUT, "expect")

# Resize targets (w, h) applied to each resample source: down, up, mixed, one axis unchanged
# (Pillow/torch skip that pass), heavy reduction (many taps), identity.
LZ_SIZES = [(31, 23), (110, 83), (17, 91), (61, 30), (20, 47), (7, 5), (61, 47), (1, 1), (200, 3)]
BL_SIZES = [(31, 23), (110, 83), (17, 91), (61, 30), (20, 47), (7, 5), (61, 47), (1, 1), (200, 3)]
BIG_SIZES = [(97, 67), (181, 97), (160, 60)]
# A tall source: resample.c works in bands of ~128 source rows, so these cross band edges.
TALL_SIZES = [(17, 290), (31, 150)]


def synth(w, h, seed, alpha=False):
    """A photo-like test pattern: gradients, a disc, hard edges and noise (numpy u8 HxWxC)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127 + 120 * np.sin(x / 3.0 + y / 5.0)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.3) ** 2
    r = np.where(disc, 250, r)
    g = np.where(disc, 20, g)
    b = np.where((x.astype(int) // 7) % 2 == 0, b, 255 - b)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if alpha:
        a = np.clip(255 * (x + y) / (w + h - 2), 0, 255).astype(np.uint8)
        a[: h // 4, : w // 4] = 0  # fully transparent corner: its colour must survive convert
        img = np.concatenate([img, a[..., None]], -1)
    return img


def png_chunk(t, data):
    c = struct.pack(">I", len(data)) + t + data
    return c + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)


def write_png(path, w, h, depth, ctype, rows, extra=b""):
    """Minimal PNG writer for the types Pillow cannot save (16-bit RGB, 2/4-bit gray, ...).
    rows: list of raw scanline bytes (without the filter byte)."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)


def pack_bits(vals, depth):
    out, acc, n = bytearray(), 0, 0
    for v in vals:
        acc = (acc << depth) | int(v)
        n += depth
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def tj_compress_cmyk(cmyk, path):
    """YCCK JPEG: TurboJPEG compresses TJPF_CMYK input as YCCK (Pillow cannot write YCCK)."""
    lib = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    lib.tjInitCompress.restype = ctypes.c_void_p
    lib.tjCompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                ctypes.POINTER(ctypes.c_ulong), ctypes.c_int, ctypes.c_int,
                                ctypes.c_int]
    lib.tjFree.argtypes = [ctypes.c_void_p]
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    h, w, _ = cmyk.shape
    hd = lib.tjInitCompress()
    buf, size = ctypes.c_void_p(), ctypes.c_ulong(0)
    TJPF_CMYK, TJSAMP_420 = 11, 2
    rc = lib.tjCompress2(hd, cmyk.tobytes(), w, 0, h, TJPF_CMYK, ctypes.byref(buf),
                         ctypes.byref(size), TJSAMP_420, 90, 0)
    assert rc == 0, "tjCompress2 failed"
    data = ctypes.string_at(buf, size.value)
    lib.tjFree(buf)
    lib.tjDestroy(hd)
    with open(path, "wb") as f:
        f.write(data)


def make_images():
    import numpy as np
    from PIL import Image
    os.makedirs(IMG, exist_ok=True)
    P = lambda n: os.path.join(IMG, n)
    good, bad = [], []

    rgb64 = Image.fromarray(synth(64, 48, 1))
    rgb37 = Image.fromarray(synth(37, 23, 2))
    rgb17 = Image.fromarray(synth(17, 91, 3))
    rgba = Image.fromarray(synth(40, 30, 4, alpha=True), "RGBA")

    # JPEG (Debian Pillow -> system libjpeg-turbo 2.1.5)
    rgb64.save(P("j420_64x48.jpg"), quality=90, subsampling=2); good.append("j420_64x48.jpg")
    rgb64.save(P("j444_64x48.jpg"), quality=90, subsampling=0); good.append("j444_64x48.jpg")
    rgb37.save(P("j422_37x23.jpg"), quality=85, subsampling=1); good.append("j422_37x23.jpg")
    rgb37.save(P("j420_37x23.jpg"), quality=75, subsampling=2); good.append("j420_37x23.jpg")
    rgb17.save(P("j420_17x91.jpg"), quality=95, subsampling=2); good.append("j420_17x91.jpg")
    rgb64.convert("L").save(P("jgray_64x48.jpg"), quality=90); good.append("jgray_64x48.jpg")
    rgb64.save(P("jprog_64x48.jpg"), quality=90, progressive=True); good.append("jprog_64x48.jpg")
    rgb37.convert("CMYK").save(P("jcmyk_37x23.jpg"), quality=90); good.append("jcmyk_37x23.jpg")
    cm = synth(33, 21, 5, alpha=True)  # 4 arbitrary channels used as C, M, Y, K
    tj_compress_cmyk(cm, P("jycck_33x21.jpg")); good.append("jycck_33x21.jpg")
    ex = Image.Exif()
    ex[0x0112] = 6  # orientation: rotate 90 CW on display; the stored size must be kept
    rgb17.save(P("jexif6_17x91.jpg"), quality=90, exif=ex.tobytes()); good.append("jexif6_17x91.jpg")
    rgb64.save(P("jrst_64x48.jpg"), quality=90, restart_marker_blocks=1); good.append("jrst_64x48.jpg")

    # PNG through Pillow
    rgb64.save(P("p_rgb8_64x48.png")); good.append("p_rgb8_64x48.png")
    rgba.save(P("p_rgba8_40x30.png")); good.append("p_rgba8_40x30.png")
    rgb37.convert("L").save(P("p_l8_37x23.png")); good.append("p_l8_37x23.png")
    rgba.convert("LA").save(P("p_la8_40x30.png")); good.append("p_la8_40x30.png")
    pal = rgb37.quantize(64)
    pal.save(P("p_pal_37x23.png")); good.append("p_pal_37x23.png")
    pal.save(P("p_paltrns_37x23.png"), transparency=3); good.append("p_paltrns_37x23.png")
    rgb17.quantize(16).save(P("p_pal4_17x91.png"), bits=4); good.append("p_pal4_17x91.png")
    rgb37.convert("1").save(P("p_gray1_37x23.png")); good.append("p_gray1_37x23.png")
    rgb64.save(P("p_rgbtrns_64x48.png"), transparency=(10, 20, 30)); good.append("p_rgbtrns_64x48.png")

    # PNG types Pillow cannot write
    rng = np.random.default_rng(7)
    w, h = 23, 17
    g2 = rng.integers(0, 4, (h, w))
    write_png(P("p_gray2_23x17.png"), w, h, 2, 0, [pack_bits(r, 2) for r in g2]); good.append("p_gray2_23x17.png")
    g4 = rng.integers(0, 16, (h, w))
    write_png(P("p_gray4_23x17.png"), w, h, 4, 0, [pack_bits(r, 4) for r in g4]); good.append("p_gray4_23x17.png")
    # 16-bit gray: a quarter of the values below 256 so both sides of Pillow's clip show
    g16 = rng.integers(0, 65536, (h, w)).astype(">u2")
    g16[:, : w // 4] = rng.integers(0, 256, (h, w // 4))
    write_png(P("p_gray16_23x17.png"), w, h, 16, 0, [r.tobytes() for r in g16]); good.append("p_gray16_23x17.png")
    la16 = rng.integers(0, 65536, (h, w, 2)).astype(">u2")
    write_png(P("p_la16_23x17.png"), w, h, 16, 4, [r.tobytes() for r in la16]); good.append("p_la16_23x17.png")
    c16 = rng.integers(0, 65536, (h, w, 3)).astype(">u2")
    write_png(P("p_rgb16_23x17.png"), w, h, 16, 2, [r.tobytes() for r in c16]); good.append("p_rgb16_23x17.png")
    a16 = rng.integers(0, 65536, (h, w, 4)).astype(">u2")
    write_png(P("p_rgba16_23x17.png"), w, h, 16, 6, [r.tobytes() for r in a16]); good.append("p_rgba16_23x17.png")
    trns = png_chunk(b"tRNS", struct.pack(">H", 300))
    write_png(P("p_gray16trns_23x17.png"), w, h, 16, 0, [r.tobytes() for r in g16], trns)
    good.append("p_gray16trns_23x17.png")

    # WebP (Debian Pillow -> system libwebp 1.2.4)
    rgb64.save(P("w_lossy_64x48.webp"), quality=80); good.append("w_lossy_64x48.webp")
    rgb37.save(P("w_lossless_37x23.webp"), lossless=True); good.append("w_lossless_37x23.webp")
    rgba.save(P("w_alpha_lossy_40x30.webp"), quality=80); good.append("w_alpha_lossy_40x30.webp")
    rgba.save(P("w_alpha_lossless_40x30.webp"), lossless=True); good.append("w_alpha_lossless_40x30.webp")
    f2 = Image.fromarray(synth(64, 48, 9))
    rgb64.save(P("w_anim_64x48.webp"), save_all=True, append_images=[f2], duration=100, lossless=True)
    good.append("w_anim_64x48.webp")

    # Other stills (FFmpeg path)
    rgb37.save(P("o_rgb_37x23.bmp")); good.append("o_rgb_37x23.bmp")
    pal.save(P("o_pal_37x23.gif")); good.append("o_pal_37x23.gif")
    rgb37.save(P("o_rgb_37x23.tif")); good.append("o_rgb_37x23.tif")

    # Resample sources (lossless, so the decoded u8 is exactly the pattern)
    Image.fromarray(synth(61, 47, 11)).save(P("rs_61x47.png")); good.append("rs_61x47.png")
    Image.fromarray(synth(160, 120, 12)).save(P("rs_160x120.png")); good.append("rs_160x120.png")
    Image.fromarray(synth(24, 400, 13)).save(P("rs_24x400.png")); good.append("rs_24x400.png")

    # Bad files: each must make Pillow raise, and qie return an error naming the file
    def cut(src, dst, frac):
        with open(P(src), "rb") as f:
            d = f.read()
        with open(P(dst), "wb") as f:
            f.write(d[: int(len(d) * frac)])
    cut("j420_64x48.jpg", "bad_trunc.jpg", 0.6); bad.append("bad_trunc.jpg")
    cut("jprog_64x48.jpg", "bad_truncprog.jpg", 0.7); bad.append("bad_truncprog.jpg")
    cut("p_rgb8_64x48.png", "bad_trunc.png", 0.6); bad.append("bad_trunc.png")
    cut("w_lossy_64x48.webp", "bad_trunc.webp", 0.6); bad.append("bad_trunc.webp")
    with open(P("bad_garbage.bin"), "wb") as f:
        f.write(bytes(rng.integers(0, 256, 700, dtype=np.uint8)))
    bad.append("bad_garbage.bin")
    open(P("bad_empty.jpg"), "wb").close(); bad.append("bad_empty.jpg")
    with open(P("bad_jpeghdr.jpg"), "wb") as f:  # SOI + garbage
        f.write(b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    bad.append("bad_jpeghdr.jpg")
    # PNG with a zero width in IHDR (valid CRC)
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    with open(P("bad_zerodim.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
                png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))
    bad.append("bad_zerodim.png")
    # PNG claiming 20000x20000 (400 Mpx > 178,956,970): a decompression bomb for Pillow
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    with open(P("bad_bomb.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
                png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + png_chunk(b"IEND", b""))
    bad.append("bad_bomb.png")
    return good, bad


def run_pil(good, bad):
    import PIL
    from PIL import Image, features
    os.makedirs(EXP, exist_ok=True)
    index = {"versions": {"pillow": PIL.__version__, "libjpeg": features.version("jpg"),
                          "libwebp": features.version("webp"), "zlib": features.version("zlib"),
                          "python_pil": sys.executable},
             "decode": [], "bad": [], "lanczos": [], "bilinear": []}
    for n in good:
        p = os.path.join(IMG, n)
        with Image.open(p) as im:
            size, mode = im.size, im.mode
            rgb = im.convert("RGB")
        assert rgb.size == size
        e = n.rsplit(".", 1)[0] + ".rgb"
        with open(os.path.join(EXP, e), "wb") as f:
            f.write(rgb.tobytes())
        index["decode"].append({"file": n, "w": size[0], "h": size[1], "mode": mode, "expect": e})
    for n in bad:
        try:
            with Image.open(os.path.join(IMG, n)) as im:
                im.convert("RGB")
            raise SystemExit("Pillow accepted bad file " + n)
        except SystemExit:
            raise
        except Exception as ex:  # Pillow raises: record why, for the reader
            index["bad"].append({"file": n, "pillow": type(ex).__name__ + ": " + str(ex)[:120]})
    srcs = [("rs_61x47.png", LZ_SIZES), ("j420_37x23.jpg", LZ_SIZES[:4]), ("rs_160x120.png", BIG_SIZES),
            ("rs_24x400.png", TALL_SIZES)]
    for n, sizes in srcs:
        with Image.open(os.path.join(IMG, n)) as im:
            im = im.convert("RGB")
            for (w, h) in sizes:
                e = "lz_%s_%dx%d.rgb" % (n.rsplit(".", 1)[0], w, h)
                with open(os.path.join(EXP, e), "wb") as f:
                    f.write(im.resize((w, h), Image.LANCZOS).tobytes())
                index["lanczos"].append({"src": n, "w": w, "h": h, "expect": e})
    for n, sizes in [("rs_61x47.png", BL_SIZES), ("rs_160x120.png", BIG_SIZES),
                     ("rs_24x400.png", TALL_SIZES)]:
        for (w, h) in sizes:
            e = "bl_%s_%dx%d.f32" % (n.rsplit(".", 1)[0], w, h)
            index["bilinear"].append({"src": n, "w": w, "h": h, "expect": e})
    return index


def run_torch():
    """Second half: torch references for the float antialiased-bilinear path."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    with open(os.path.join(OUT, "index.json")) as f:
        index = json.load(f)
    dec = {d["file"]: d for d in index["decode"]}
    for b in index["bilinear"]:
        d = dec[b["src"]]
        u8 = np.fromfile(os.path.join(EXP, d["expect"]), np.uint8).reshape(d["h"], d["w"], 3)
        # as VideoX-Fun: HWC u8 -> CHW float32, / 255 in float32 (data_pipeline.md §1.2)
        x = torch.from_numpy(u8).permute(2, 0, 1).contiguous().float() / 255
        y = F.interpolate(x[None], (b["h"], b["w"]), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        y.contiguous().numpy().astype("<f4").tofile(os.path.join(EXP, b["expect"]))
    index["versions"]["torch"] = torch.__version__
    index["versions"]["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


def main():
    if "--torch" in sys.argv:
        run_torch()
        return
    good, bad = make_images()
    index = run_pil(good, bad)
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    tp = os.environ.get("TORCH_PYTHON", "python3")
    subprocess.run([tp, __file__, "--torch"], check=True)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print("wrote %d good, %d bad images; %d lanczos, %d bilinear cases; %.0f KB" %
          (len(good), len(bad), len(index["lanczos"]), len(index["bilinear"]), total / 1024))


if __name__ == "__main__":
    main()
