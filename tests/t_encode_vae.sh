#!/usr/bin/env bash
# tests/t_encode_vae.sh: qie-encode-vae as a process, with the golden vae-tiny model on the CPU:
# options and exit codes, a stream with good and bad records (file in, file out; pipes), what
# comes out (qie-cat --print), two encoders fed by one bound producer (the multi-GPU layout), an
# upstream that dies. Input records come from `test_vae_stage --gen` (small images: the tiny
# model at qie-decode's ~1 Mpixel source sizes takes ~30 s per source on one core); with
# QIE_SLOW_TESTS=1 a real qie-decode -> qie-encode-vae -> qie-cat pipeline runs too.
set -u
. "$(dirname "$0")/shlib.sh"
: "${QIE_BUILD:=$PWD/build}"
MODEL=${QIE_GOLDEN_DIR:-tests/golden}/vae/model
GEN="$QIE_BUILD/tests/test_vae_stage"
port=$(test_ports 1)
T=120
Q=(--log_level error --progress=false)

"$GEN" --gen "$T_TMP/in.qie" >/dev/null
check "generator wrote the input" [ -s "$T_TMP/in.qie" ]

qie-encode-vae --help >"$T_TMP/help"; rc=$?
check "help exits 0" [ $rc -eq 0 ]
check "help lists --vae_mini_batch" grep -q -- --vae_mini_batch "$T_TMP/help"
qie-encode-vae --no_such_flag >/dev/null 2>&1; rc=$?
check "unknown flag exits 2" [ $rc -eq 2 ]
qie-encode-vae --in "$T_TMP/in.qie" >/dev/null 2>&1; rc=$?
check "missing --model exits 2" [ $rc -eq 2 ]
qie-encode-vae --model "$MODEL" --posterior_dtype f16 >/dev/null 2>&1; rc=$?
check "bad --posterior_dtype exits 2" [ $rc -eq 2 ]
qie-encode-vae --model "$T_TMP/nope" --in "$T_TMP/in.qie" --out "$T_TMP/x.qie" "${Q[@]}" 2>"$T_TMP/err"; rc=$?
check "missing model exits 1 with a reason" [ $rc -eq 1 ] && grep -q "config.json" "$T_TMP/err"
check "no output file after a failure" [ ! -e "$T_TMP/x.qie" ]
qie-encode-vae --model "$MODEL" --device cuda --in "$T_TMP/in.qie" --out "$T_TMP/x.qie" "${Q[@]}" 2>/dev/null; rc=$?
check "--device cuda without CUDA (or a GPU) exits non-zero" [ $rc -ne 0 ]

# a stream with 4 good and 6 bad records: the bad ones are reported and counted, the rest flow
timeout $T qie-encode-vae --model "$MODEL" --in "$T_TMP/in.qie" --out "$T_TMP/out.qie" --vae_mini_batch 3 \
    --progress=false 2>"$T_TMP/log"; rc=$?
check "bad records do not fail the run" [ $rc -eq 0 ]
check "6 rejections, each on one line with a reason" [ "$(grep -c 'rejected:' "$T_TMP/log")" -eq 6 ]
check "summary counts them" grep -q "10 records in, 4 out, 6 rejected, 8 images encoded" "$T_TMP/log"
check "NaN named" grep -q "NaN or Inf" "$T_TMP/log"
check "odd size named" grep -q "multiples of 8" "$T_TMP/log"
qie-cat --in "$T_TMP/out.qie" --print >"$T_TMP/print"
check "4 records out, in input order" [ "$(awk '{print $1}' "$T_TMP/print" | tr '\n' ' ')" = "rec-0 rec-2 rec-5 rec-8 " ]
check "latents in every record" [ "$(grep -c 'target_mean:bf16\[16,1,2,3\]\|target_mean:bf16\[16,1,3,2\]\|target_mean:bf16\[16,1,1,2\]' "$T_TMP/print")" -eq 4 ]
check "both posteriors of both sources" grep -q 'source_mean.1:bf16\[16,1,1,1\] source_logvar.1:bf16\[16,1,1,1\]' "$T_TMP/print"
check "pixels dropped" bash -c "! grep -q '_pixels' '$T_TMP/print'"
check "source_cond kept" grep -q 'source_cond.0:u8' "$T_TMP/print"

# pipes, --keep_pixels, f32
timeout $T qie-encode-vae --model "$MODEL" --keep_pixels --posterior_dtype f32 "${Q[@]}" <"$T_TMP/in.qie" |
    qie-cat --print >"$T_TMP/print2"
check "pipes: stdin -> stdout" [ "$(wc -l <"$T_TMP/print2")" -eq 4 ]
check "--keep_pixels keeps them" grep -q 'target_pixels:bf16' "$T_TMP/print2"
check "--posterior_dtype f32" grep -q 'target_logvar:f32\[16,1,2,3\]' "$T_TMP/print2"

# one producer bound with peers=2, two encoders connecting: every record encoded once
two_encoders() {
    local url="tcp://127.0.0.1:$port"
    timeout $T qie-encode-vae --model "$MODEL" --in ">$url" --out "$T_TMP/e1.qie" "${Q[@]}" & local p1=$!
    timeout $T qie-encode-vae --model "$MODEL" --in ">$url" --out "$T_TMP/e2.qie" "${Q[@]}" & local p2=$!
    timeout $T qie-cat --in "$T_TMP/in.qie" --out "@$url?peers=2" || return 1
    wait $p1 && wait $p2 || return 1
    [ "$( (qie-cat --in "$T_TMP/e1.qie" --print; qie-cat --in "$T_TMP/e2.qie" --print) | awk '{print $1}' | sort |
        tr '\n' ' ')" = "rec-0 rec-2 rec-5 rec-8 " ]
}
check "two encoders on one bound producer (peers=2): each good record once" two_encoders

# an upstream that stops without its end-of-stream mark fails the encoder (and the pipeline)
head -c $(( $(stat -c %s "$T_TMP/in.qie") / 2 )) "$T_TMP/in.qie" >"$T_TMP/trunc.qie"
timeout $T qie-encode-vae --model "$MODEL" --in "$T_TMP/trunc.qie" --out "$T_TMP/t.qie" "${Q[@]}" 2>/dev/null; rc=$?
check "truncated input exits 1, no output file" [ $rc -eq 1 ] && [ ! -e "$T_TMP/t.qie" ]

if [ "${QIE_SLOW_TESTS:-0}" = 1 ]; then
    E2E=${QIE_GOLDEN_DIR:-tests/golden}/decode/buckets/e2e
    cp "$E2E"/*.png "$T_TMP"/
    printf '[{"file_path": "a_target.png", "text": "t", "source_file_path": ["a_src.png"]}]' >"$T_TMP/meta.json"
    qie-decode --train_data_meta "$T_TMP/meta.json" --train_data_dir "$T_TMP" --train_mode qwen_image_edit_plus \
        --image_sample_size 64 --enable_bucket "${Q[@]}" |
        qie-encode-vae --model "$MODEL" "${Q[@]}" | qie-cat --print >"$T_TMP/print3"
    check "slow: decode -> encode-vae -> cat" grep -q 'target_mean:bf16\[16,1,6,8\].*source_mean.0:bf16\[16,1,108,152\]' "$T_TMP/print3"
fi
finish
