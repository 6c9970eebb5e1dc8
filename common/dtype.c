/* dtype.c: dtype sizes and names (the record spelling; safetensors uses its own upper-case one). */
#include "dtype.h"
#include "err.h"

/* bits, not bytes: F4 and F6_* are 4 and 6 bits wide (safetensors Dtype::bitsize). */
static const struct { const char *name; size_t bits; } dtype_table_[QIE_DT_COUNT] = {
    [QIE_DT_U8] = {"u8", 8},       [QIE_DT_I8] = {"i8", 8},       [QIE_DT_BOOL] = {"bool", 8},
    [QIE_DT_I16] = {"i16", 16},    [QIE_DT_U16] = {"u16", 16},    [QIE_DT_F16] = {"f16", 16},
    [QIE_DT_BF16] = {"bf16", 16},  [QIE_DT_I32] = {"i32", 32},    [QIE_DT_U32] = {"u32", 32},
    [QIE_DT_F32] = {"f32", 32},    [QIE_DT_I64] = {"i64", 64},    [QIE_DT_U64] = {"u64", 64},
    [QIE_DT_F64] = {"f64", 64},    [QIE_DT_F8_E4M3] = {"f8_e4m3", 8}, [QIE_DT_F8_E5M2] = {"f8_e5m2", 8},
    [QIE_DT_F8_E8M0] = {"f8_e8m0", 8}, [QIE_DT_F8_E4M3FNUZ] = {"f8_e4m3fnuz", 8},
    [QIE_DT_F8_E5M2FNUZ] = {"f8_e5m2fnuz", 8}, [QIE_DT_C64] = {"c64", 64},
    [QIE_DT_F4] = {"f4", 4},       [QIE_DT_F6_E2M3] = {"f6_e2m3", 6}, [QIE_DT_F6_E3M2] = {"f6_e3m2", 6},
};

size_t dtype_size(QieDtype dt) {
    if ((unsigned)dt >= QIE_DT_COUNT || dtype_table_[dt].bits % 8) return 0;
    return dtype_table_[dt].bits / 8;
}

size_t dtype_bits(QieDtype dt) {
    return (unsigned)dt < QIE_DT_COUNT ? dtype_table_[dt].bits : 0;
}

const char *dtype_name(QieDtype dt) {
    return (unsigned)dt < QIE_DT_COUNT ? dtype_table_[dt].name : NULL;
}

int dtype_parse(const char *s, size_t len, QieDtype *out) {
    for (int i = 0; i < QIE_DT_COUNT; i++) {
        const char *n = dtype_table_[i].name;
        if (dtype_table_[i].bits % 8) continue;
        if (strlen(n) == len && !memcmp(n, s, len)) { *out = (QieDtype)i; return 0; }
    }
    return QIE_EINVAL;
}
