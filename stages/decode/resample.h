/* resample.h: the two resizers of the reference's pixel path (data_pipeline.md §0.3, §4.1-4.2).
 *
 * Both use one coefficient generator with Pillow's geometry (Resample.c precompute_coeffs:
 * support stretched by the reduction factor, taps [(int)(c - s + .5), (int)(c + s + .5)) clamped,
 * weights normalised per output so edges renormalise) and run horizontal then vertical, skipping
 * a pass whose size is unchanged. They differ in the apply loop:
 *   - resample_lanczos_u8: Pillow LANCZOS on 8-bit RGB, bit-exact (double coefficients turned
 *     into 22-bit fixed point, 8-bit intermediate over only the rows the vertical pass reads).
 *   - resample_bilinear_aa_f32: torch interpolate(mode='bilinear', antialias=True,
 *     align_corners=False) on float32, with torch's float32 weight arithmetic and the
 *     accumulation of its x86 AVX2 kernel (taps in order; groups of 4 unfused, tail fused).
 *     Bit-exact on the golden set against torch 2.15 (x86, AVX2 kernels) and torch 2.11
 *     (x86, AVX-512 kernels); not checked against aarch64 or ATEN_CPU_CAPABILITY=default
 *     builds, which may round ~1 ulp differently.
 * resample_target_bf16 is the reference's whole target path (u8 -> /255 -> bilinear-aa ->
 * crop -> normalise -> bf16) in one banded pass, with the same bytes.
 * Portable loops everywhere; AVX2 loops on x86-64 CPUs that have AVX2 + FMA (run-time check),
 * bit-identical to them (resample_set_simd switches, for tests and benchmarks).
 * No threads: the stage runs one worker per core. Temporaries are malloc'd per call.
 *
 * defines: resample_lanczos_u8, resample_bilinear_aa_f32, resample_target_bf16,
 *          resample_u8_to_chw_f32, resample_set_simd */
#ifndef QIE_STAGES_DECODE_RESAMPLE_H
#define QIE_STAGES_DECODE_RESAMPLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Pillow `Image.resize((dw, dh), Image.LANCZOS)` of an RGB image.
 * src (sh, sw, 3) u8 interleaved, dst (dh, dw, 3) u8, both packed; they must not overlap.
 * Returns 0, QIE_EINVAL (sizes <= 0 or too large) or QIE_ENOMEM. */
int resample_lanczos_u8(char *err, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw,
                        int dh);

/* torch `F.interpolate(x[None], (dh, dw), mode='bilinear', antialias=True,
 * align_corners=False)[0]` in float32 (what torchvision Resize(BILINEAR) does to a float tensor).
 * src (3, sh, sw) f32 planar, dst (3, dh, dw) f32 planar; must not overlap.
 * Returns 0, QIE_EINVAL or QIE_ENOMEM. */
int resample_bilinear_aa_f32(char *err, const float *src, int sw, int sh, float *dst, int dw,
                             int dh);

/* The reference's whole target path in one pass, without full-size float intermediates:
 * x = u8 / 255 (float32, CHW), torch bilinear-aa resize to (rh, rw) as resample_bilinear_aa_f32
 * (none when the size is unchanged), crop [crop_top, +bh) x [crop_left, +bw), then
 * bf16((x - 0.5) / 0.5) (round to nearest even). src (sh, sw, 3) u8; dst (3, bh, bw) bf16 bits.
 * Only the cropped outputs are computed; each is the same float the full resize gives, so the
 * result is bit-identical to resize + crop + normalise. Returns 0, QIE_EINVAL or QIE_ENOMEM. */
int resample_target_bf16(char *err, const uint8_t *src, int sw, int sh, int rw, int rh,
                         int crop_left, int crop_top, int bw, int bh, uint16_t *dst);

/* (h, w, 3) u8 -> (3, h, w) f32 in [0, 1]: v / 255.0f, float32 division as torch's
 * `tensor.float() / 255` (the reference's first step, data_pipeline.md §1.2). */
void resample_u8_to_chw_f32(const uint8_t *src, int w, int h, float *dst);

/* Tests and benchmarks: on = 0 forces the portable loops, on = 1 restores the default (the
 * x86-64 AVX2 loops where the CPU has AVX2 + FMA). Returns 1 when the AVX2 loops are in use.
 * Both give the same bytes. Process-wide; not for use while another thread resizes. */
int resample_set_simd(int on);

#ifdef __cplusplus
}
#endif
#endif
