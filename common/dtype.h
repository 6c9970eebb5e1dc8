/* dtype.h: the tensor element types qie moves around, and bf16/f16 <-> f32 conversion.
 * Conversions to bf16/f16 round to nearest even, as torch's .to(torch.bfloat16) does; NaN stays
 * NaN (quiet), Inf stays Inf. Header-only so kernels and stages share one definition. */
#ifndef QIE_COMMON_DTYPE_H
#define QIE_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    QIE_DT_U8 = 0,
    QIE_DT_I8,
    QIE_DT_BOOL,
    QIE_DT_I16,
    QIE_DT_U16,
    QIE_DT_F16,
    QIE_DT_BF16,
    QIE_DT_I32,
    QIE_DT_U32,
    QIE_DT_F32,
    QIE_DT_I64,
    QIE_DT_U64,
    QIE_DT_F64,
    QIE_DT_F8_E4M3,
    QIE_DT_F8_E5M2,
    /* Appended for safetensors (spec section 8, "recent versions"): qie reads them but never
     * computes with them. F4 and F6_* are sub-byte: dtype_size() is 0 for them, use dtype_bits(). */
    QIE_DT_F8_E8M0,
    QIE_DT_F8_E4M3FNUZ,
    QIE_DT_F8_E5M2FNUZ,
    QIE_DT_C64,
    QIE_DT_F4,
    QIE_DT_F6_E2M3,
    QIE_DT_F6_E3M2,
    QIE_DT_COUNT
} QieDtype;

/* bytes per element; 0 for an invalid dtype and for the sub-byte ones (F4, F6_*) */
size_t dtype_size(QieDtype dt);
/* bits per element (4 and 6 for the sub-byte dtypes); 0 for an invalid dtype */
size_t dtype_bits(QieDtype dt);
/* lower-case record name ("f32", "bf16", ...); NULL for an invalid dtype */
const char *dtype_name(QieDtype dt);
/* parses the record name; 0 or QIE_EINVAL. Sub-byte dtypes are refused: records carry
 * whole-byte elements only, and callers divide by dtype_size(). */
int dtype_parse(const char *s, size_t len, QieDtype *out);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400u));
            u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);         /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);        /* rounds to >= 65520: Inf */
    if (a < 0x38800000u) {                                          /* below 2^-14: subnormal or 0 */
        if (a < 0x33000000u) return sign;                           /* below half the smallest subnormal */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                   /* 14..24 */
        uint32_t half = 1u << (shift - 1), rest = m & ((1u << shift) - 1), q = m >> shift;
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                     /* round mantissa to 10 bits */
    return (uint16_t)(sign | (((r >> 13) - (112u << 10)) & 0x7fffu));
}

#ifdef __cplusplus
}
#endif
#endif
