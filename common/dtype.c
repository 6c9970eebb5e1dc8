/* dtype.c: dtype sizes and names (the record spelling; safetensors uses its own upper-case one). */
#include "dtype.h"
#include "err.h"

static const struct { const char *name; size_t size; } dtype_table_[QIE_DT_COUNT] = {
    [QIE_DT_U8] = {"u8", 1},     [QIE_DT_I8] = {"i8", 1},     [QIE_DT_BOOL] = {"bool", 1},
    [QIE_DT_I16] = {"i16", 2},   [QIE_DT_U16] = {"u16", 2},   [QIE_DT_F16] = {"f16", 2},
    [QIE_DT_BF16] = {"bf16", 2}, [QIE_DT_I32] = {"i32", 4},   [QIE_DT_U32] = {"u32", 4},
    [QIE_DT_F32] = {"f32", 4},   [QIE_DT_I64] = {"i64", 8},   [QIE_DT_U64] = {"u64", 8},
    [QIE_DT_F64] = {"f64", 8},   [QIE_DT_F8_E4M3] = {"f8_e4m3", 1}, [QIE_DT_F8_E5M2] = {"f8_e5m2", 1},
};

size_t dtype_size(QieDtype dt) {
    return (unsigned)dt < QIE_DT_COUNT ? dtype_table_[dt].size : 0;
}

const char *dtype_name(QieDtype dt) {
    return (unsigned)dt < QIE_DT_COUNT ? dtype_table_[dt].name : NULL;
}

int dtype_parse(const char *s, size_t len, QieDtype *out) {
    for (int i = 0; i < QIE_DT_COUNT; i++) {
        const char *n = dtype_table_[i].name;
        if (strlen(n) == len && !memcmp(n, s, len)) { *out = (QieDtype)i; return 0; }
    }
    return QIE_EINVAL;
}
