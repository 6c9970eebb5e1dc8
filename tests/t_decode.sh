#!/usr/bin/env bash
# tests/t_decode.sh: qie-decode as a process: options, exit codes, bad JSON, rejects, -j, shards,
# id stability, --random_hw_adapt draws, path joining. Records are inspected with qie-cat --print.
set -u
. "$(dirname "$0")/shlib.sh"
E2E=${QIE_GOLDEN_DIR:-tests/golden}/decode/buckets/e2e
META=${QIE_GOLDEN_DIR:-tests/golden}/decode/meta
D=$T_TMP/data
mkdir -p "$D"
cp "$E2E"/*.png "$D"/
head -c 3000 "$D/a_target.png" >"$D/truncated.png"
echo "not an image" >"$D/garbage.png"
printf 'P6\n0 0\n255\n' >"$D/zero.ppm"

# 20 entries: good ones are those whose text starts with "good"
cat >"$D/meta.json" <<'EOF'
[
 {"file_path": "a_target.png", "text": "good 0", "source_file_path": ["a_src.png"]},
 {"file_path": "missing.png", "text": "missing target", "source_file_path": ["a_src.png"]},
 {"file_path": "b_target.png", "text": "good 2", "source_file_path": "b_src0.png"},
 {"file_path": "truncated.png", "text": "truncated", "source_file_path": ["a_src.png"]},
 {"file_path": "garbage.png", "text": "garbage", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "text": "good 5", "source_file_path": ["b_src1.png"], "type": "image"},
 {"file_path": "clip.mp4", "text": "video", "type": "video", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "text": "two sources", "source_file_path": ["a_src.png", "b_src0.png"]},
 {"file_path": "b_target.png", "text": "good 9", "source_file_path": ["b_src1.png"]},
 {"file_path": "a_target.png", "text": "no source"},
 {"file_path": "a_target.png", "text": "missing source", "source_file_path": ["nope.png"]},
 {"file_path": "zero.ppm", "text": "zero size", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "text": "good 13", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "text": 13, "source_file_path": ["a_src.png"]},
 {"file_path": "b_target.png", "text": "good 15", "source_file_path": ["a_src.png"]},
 {"file_path": "a_target.png", "text": "wrong type", "type": 3, "source_file_path": ["a_src.png"]},
 {"file_path": "b_target.png", "text": "good 17", "source_file_path": ["b_src0.png"]},
 "just a string",
 {"file_path": "a_target.png", "text": "good 19", "source_file_path": ["b_src0.png"]}
]
EOF
COMMON=(--train_data_meta "$D/meta.json" --train_data_dir "$D" --image_sample_size 64 --enable_bucket --log_level error --progress=false)

ids() { qie-cat --in "$1" --print | awk '{print $1}' | sort; }
indices() { qie-cat --in "$1" --print | sed -n 's/.* index=\([0-9]*\) .*/\1/p' | sort -n | tr '\n' ' '; }

qie-decode --help >"$T_TMP/help"; rc=$?
check "help exits 0" [ $rc -eq 0 ]
check "help lists the flags" grep -q -- --random_hw_adapt "$T_TMP/help"
qie-decode --no_such_flag >/dev/null 2>&1; rc=$?
check "unknown flag exits 2" [ $rc -eq 2 ]
qie-decode "${COMMON[@]}" --train_mode qwen_image >/dev/null 2>&1; rc=$?
check "unknown train_mode refused" [ $rc -eq 2 ]
qie-decode "${COMMON[@]}" --random_ratio_crop >/dev/null 2>&1; rc=$?
check "random_ratio_crop refused" [ $rc -eq 2 ]
qie-decode "${COMMON[@]}" --shard 3/3 >/dev/null 2>&1; rc=$?
check "bad shard refused" [ $rc -eq 2 ]

# bad JSON: error with line/column, nothing emitted (no file; empty stdout), non-zero exit
for f in bad_trailing_comma bad_truncated bad_utf8 bad_not_list; do
    qie-decode --train_data_meta "$META/$f.json" --out "$T_TMP/bad.qie" --log_level error 2>"$T_TMP/err" >/dev/null
    rc=$?
    check "$f: exit non-zero" [ $rc -ne 0 ]
    check "$f: line/column in the error" grep -q 'line [0-9]* column [0-9]*' "$T_TMP/err"
    check "$f: no output file" [ ! -e "$T_TMP/bad.qie" ]
    qie-decode --train_data_meta "$META/$f.json" --log_level error 2>/dev/null >"$T_TMP/bad.out"
    check "$f: nothing on stdout" [ ! -s "$T_TMP/bad.out" ]
done

# one thread: rejects reported, good entries in metadata order, summary, exit 0
qie-decode "${COMMON[@]}" --log_level warn --out "$T_TMP/j1.qie" --rejects "$T_TMP/rej.jsonl" 2>"$T_TMP/err1"; rc=$?
check "rejects do not fail the run" [ $rc -eq 0 ]
check "good entries in order" [ "$(indices "$T_TMP/j1.qie")" = "0 2 5 9 13 15 17 19 " ]
got=$(qie-cat --in "$T_TMP/j1.qie" --print | wc -l)
check "good entries emitted ($got)" [ "$got" -eq 8 ]
check "one reject line per bad entry" [ "$(wc -l <"$T_TMP/rej.jsonl")" -eq 12 ]
check "summary printed" grep -q '20 entries, 8 processed, 12 rejected' "$T_TMP/err1"
check "reject stderr lines" [ "$(grep -c 'reject entry' "$T_TMP/err1")" -eq 12 ]
python3 - "$T_TMP/rej.jsonl" <<'EOF'; rc=$?
import json, sys
want = {1: "No such file", 3: "truncated.png", 4: "not an image", 6: "video", 7: "missing text",
        8: "exactly one source", 10: "exactly one source", 11: "nope.png", 12: "zero.ppm",
        14: "text is not a string", 16: "type is not a string", 18: "not a JSON object"}
got = {}
for line in open(sys.argv[1]):
    o = json.loads(line)
    assert set(o) == {"index", "path", "reason"}, o
    got[o["index"]] = o["path"] + " " + o["reason"]
assert set(got) == set(want), (sorted(got), sorted(want))
for k, v in want.items():
    assert v in got[k], (k, got[k], v)
EOF
check "rejects file: reasons" [ $rc -eq 0 ]
qie-decode "${COMMON[@]}" --out "$T_TMP/strict.qie" --strict 2>/dev/null; rc=$?
check "--strict exits 3 on rejects" [ $rc -eq 3 ]

# -j 4: the same records, each once
qie-decode "${COMMON[@]}" -j 4 --out "$T_TMP/j4.qie" 2>/dev/null
check "-j4: same ids as -j1" [ "$(ids "$T_TMP/j4.qie")" = "$(ids "$T_TMP/j1.qie")" ]
check "-j4: no duplicates" [ "$(ids "$T_TMP/j4.qie" | uniq -d | wc -l)" -eq 0 ]
qie-decode "${COMMON[@]}" --jobs=3 --out - 2>/dev/null >"$T_TMP/j3.qie"
check "--jobs=3 to stdout: same ids" [ "$(ids "$T_TMP/j3.qie")" = "$(ids "$T_TMP/j1.qie")" ]

# re-runs give the same ids; the settings that shape pixels change them
qie-decode "${COMMON[@]}" --out "$T_TMP/again.qie" 2>/dev/null
check "ids stable across runs" [ "$(ids "$T_TMP/again.qie")" = "$(ids "$T_TMP/j1.qie")" ]
qie-decode "${COMMON[@]}" --image_sample_size 80 --out "$T_TMP/s80.qie" 2>/dev/null
check "sample size changes every id" [ -z "$(comm -12 <(ids "$T_TMP/s80.qie") <(ids "$T_TMP/j1.qie"))" ]

# shards: disjoint, union = everything, each i/n takes index % n == i
: >"$T_TMP/union"
for i in 0 1 2; do
    qie-decode "${COMMON[@]}" -j 2 --shard $i/3 --out "$T_TMP/sh$i.qie" 2>/dev/null
    for x in $(indices "$T_TMP/sh$i.qie"); do
        check "shard $i/3 takes index $x" [ $((x % 3)) -eq $i ]
    done
    ids "$T_TMP/sh$i.qie" >>"$T_TMP/union"
done
check "shards: union is all, disjoint" [ "$(sort "$T_TMP/union")" = "$(ids "$T_TMP/j1.qie")" ]

# qwen_image_edit_plus: the two-source entry becomes good, the source-less one stays bad
qie-decode "${COMMON[@]}" --train_mode qwen_image_edit_plus --out "$T_TMP/plus.qie" 2>/dev/null
check "plus: 9 records" [ "$(qie-cat --in "$T_TMP/plus.qie" --print | wc -l)" -eq 9 ]
check "plus: condition images" grep -q 'source_cond.1:u8\[' <(qie-cat --in "$T_TMP/plus.qie" --print)

# --random_hw_adapt with injected draws (S=768: d in {1, 1.25, 1.5}): entry 0 (121x90, key 0.72)
# gets d=1.5 -> [416,576]*768/512/1.5 = 416x576; entry 2 (41x23, key 0.57) gets d=1.25 ->
# [384,672]*768/512/1.25 = 460.8x806.4, floored to 16: 448x800
{
    hdr='{"random_hw_adapt":{"dtype":"F64","shape":[20],"data_offsets":[0,160]}}'
    printf '%016x' ${#hdr} | sed 's/\(..\)/\1 /g' | awk '{for(i=8;i>0;i--) printf "\\x%s", $i}' >"$T_TMP/len.esc"
    printf "$(cat "$T_TMP/len.esc")" >"$T_TMP/draws.st"
    printf '%s' "$hdr" >>"$T_TMP/draws.st"
    one='\x00\x00\x00\x00\x00\x00\xf0\x3f' d125='\x00\x00\x00\x00\x00\x00\xf4\x3f' d15='\x00\x00\x00\x00\x00\x00\xf8\x3f'
    printf "$d15$one$d125" >>"$T_TMP/draws.st"
    for i in $(seq 4 20); do printf "$one" >>"$T_TMP/draws.st"; done
}
qie-decode "${COMMON[@]}" --image_sample_size 768 --random_hw_adapt --hw_adapt_draws "$T_TMP/draws.st" \
    --out "$T_TMP/hw.qie" 2>"$T_TMP/hw.err"; rc=$?
check "hw draws accepted" [ $rc -eq 0 ]
qie-cat --in "$T_TMP/hw.qie" --print >"$T_TMP/hw.txt"
check "d=1.5 on entry 0: bucket 416x576" grep -q 'index=0 bucket=416x576' "$T_TMP/hw.txt"
check "d=1.25 on entry 2: bucket 448x800" grep -q 'index=2 bucket=448x800' "$T_TMP/hw.txt"
check "d=1 on entry 5: bucket 624x864" grep -q 'index=5 bucket=624x864' "$T_TMP/hw.txt"
qie-decode "${COMMON[@]}" --image_sample_size 512 --random_hw_adapt --hw_adapt_draws "$T_TMP/draws.st" \
    --out "$T_TMP/hw2.qie" 2>/dev/null; rc=$?
check "draws that are not choices for S are refused" [ $rc -ne 0 ]
qie-decode "${COMMON[@]}" --image_sample_size 768 --random_hw_adapt --seed 7 --out "$T_TMP/hw7a.qie" 2>/dev/null
qie-decode "${COMMON[@]}" --image_sample_size 768 --random_hw_adapt --seed 7 -j 3 --out "$T_TMP/hw7b.qie" 2>/dev/null
check "seeded hw adapt: same ids with -j 3" [ "$(ids "$T_TMP/hw7a.qie")" = "$(ids "$T_TMP/hw7b.qie")" ]

# --train_data_dir: absent -> paths as written; empty with absolute paths (the doc's recipe)
sed "s#\"\\([a-z_0-9]*\\.png\\)\"#\"$D/\\1\"#g" "$D/meta.json" >"$T_TMP/abs.json"
qie-decode --train_data_meta "$T_TMP/abs.json" --train_data_dir= --image_sample_size 64 --enable_bucket \
    --log_level error --progress=false --out "$T_TMP/abs.qie" 2>/dev/null
check "absolute paths, empty root: same ids" [ "$(ids "$T_TMP/abs.qie")" = "$(ids "$T_TMP/j1.qie")" ]
(cd "$D" && qie-decode --train_data_meta meta.json --image_sample_size 64 --enable_bucket --log_level error \
    --progress=false --out "$T_TMP/rel.qie" 2>/dev/null)
check "no root: relative to the working directory" [ "$(qie-cat --in "$T_TMP/rel.qie" --print | wc -l)" -eq 8 ]

# the decompression-bomb limit
# 121x90 target and 97x70 source above 5000 pixels; 41x23 targets (cover resize 85x48) pass
qie-decode "${COMMON[@]}" --max_pixels 5000 --out "$T_TMP/bomb.qie" --rejects "$T_TMP/bomb.jsonl" 2>/dev/null
check "--max_pixels rejects large images" [ "$(indices "$T_TMP/bomb.qie")" = "2 9 17 " ]
check "--max_pixels reason" grep -qi 'pixel' "$T_TMP/bomb.jsonl"
finish
