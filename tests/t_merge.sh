#!/usr/bin/env bash
# t_merge.sh: qie-merge as a real process (stages/merge, ckpt_merge in common/ckpt_shard.c;
# trainer_behaviour.md §5.5 with decisions.md's diffusers layout).
#   - a W=4 ZeRO-3-style checkpoint of the tests/golden/dit/ut1 transformer -> sharded and
#     single-file diffusers folders whose tensors are bf16(master), config.json carried over,
#     --exclude_frozen_parameters, zero_to_bf16's flags (-t, --safe_serialization, -d);
#   - the golden checkpoint that scripts/golden/merge.py wrote with its own (Python) writer from
#     docs/distributed.md: qie-merge reproduces torch's bf16 weights exactly (merge.py also loaded
#     this output with QwenImageTransformer2DModel.from_pretrained when it made the fixture);
#   - damaged input: a missing rank file, no arguments, a bad size.
set -u
. "$(dirname "$0")/shlib.sh"
GOLD=${QIE_GOLDEN_DIR:-tests/golden}
TCS="${QIE_BUILD:-$PWD/build}/tests/test_ckpt_shard"
MODEL=$GOLD/dit/ut1/transformer
CK=$T_TMP/checkpoint-7
M=(qie-merge --log_level warn)

mkdir -p "$CK"
check "write a W=4 sharded checkpoint" "$TCS" --make-ckpt "$MODEL" "$CK" 4 zero3 frozen
check "merge, 100KB shards" "${M[@]}" "$CK" "$T_TMP/out" --max_shard_size 100KB --safe_serialization
check "  shards and the diffusers index" test -f "$T_TMP/out/diffusion_pytorch_model.safetensors.index.json" -a \
    -f "$T_TMP/out/diffusion_pytorch_model-00002-of-00002.safetensors"
check "  config.json carried over" cmp -s "$MODEL/config.json" "$T_TMP/out/config.json"
check "  tensors == bf16(master)" "$TCS" --compare "$T_TMP/out" "$MODEL"
check "merge again, one file (80GB)" "${M[@]}" "$CK" "$T_TMP/out"
check "  single file, stale shards and index removed" \
    test "$(ls "$T_TMP/out" | tr '\n' ' ')" = "config.json diffusion_pytorch_model.safetensors "
check "  tensors == bf16(master)" "$TCS" --compare "$T_TMP/out" "$MODEL"
check "--exclude_frozen_parameters" "${M[@]}" "$CK" "$T_TMP/ex" --exclude_frozen_parameters
check "  frozen img_in.* left out" "$TCS" --compare "$T_TMP/ex" "$MODEL" frozen
qie-merge "$CK" "$T_TMP/t" -t pytorch_model -d >/dev/null 2>"$T_TMP/err"
check "-t and -d accepted" test $? -eq 0
check "  tag reported as ignored" grep -q "tag pytorch_model ignored" "$T_TMP/err"

# the fixture written by scripts/golden/merge.py (an independent writer of the format)
check "golden (Python-written) checkpoint" "${M[@]}" "$GOLD/merge/checkpoint" "$T_TMP/g" --max_shard_size 20KB
check "  == torch's bf16 weights" "$TCS" --compare "$T_TMP/g" "$GOLD/merge/expect.safetensors"
check "  index == huggingface's" cmp -s "$T_TMP/g/diffusion_pytorch_model.safetensors.index.json" \
    "$GOLD/merge/expect.index.json"

# damaged input
rm "$CK/rank-00002-of-00004.safetensors"
"${M[@]}" "$CK" "$T_TMP/bad" 2>"$T_TMP/err"
check "missing rank file: exit 1" test $? -eq 1
check "  names the file" grep -q "rank-00002-of-00004.safetensors is missing" "$T_TMP/err"
rc_of() { "$@" >/dev/null 2>&1; echo $?; }
check "no arguments: exit 2" test "$(rc_of qie-merge)" = 2
check "bad --max_shard_size: exit 2" test "$(rc_of qie-merge "$CK" "$T_TMP/x" --max_shard_size lots)" = 2
finish
