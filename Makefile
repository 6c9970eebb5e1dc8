# qie: one Makefile for every stage, library, test and benchmark.
#   make            CPU build of every stage (build/bin/qie-*) and test
#   make CUDA=1     also the CUDA backend (nvcc, sm_90a; sm_80/sm_89 too)
#   make SAN=1      ASan+UBSan build into build-san/
#   make test       the test suite, plain and under ASan+UBSan (no GPU needed)
#   make bundle     build/bundle/: binaries + their non-system, non-CUDA shared libraries
#
# Layout: common/ -> libqie.a; kernels/*.c (+ *.cu with CUDA=1) -> libqie.a too;
# stages/<s>/*.c except main.c -> build/lib/libqie_<s>.a; stages/<s>/main.c -> qie-<s>.
# A stage names the pkg-config packages it needs in stages/<s>/stage.mk: <s>_PKGS := ...
# Executables link with --as-needed, so each records only the libraries it really uses.

CC ?= gcc
ifeq ($(CC),cc)
CC := gcc
endif
NVCC ?= /usr/local/cuda/bin/nvcc
CUDA ?= 0
SAN ?= 0
O ?= 2

ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
O := 1
else
BUILD ?= build
SANFLAGS :=
endif

BASE_PKGS := libzmq msgpack libcjson lmdb
ifneq ($(shell pkg-config --exists $(BASE_PKGS) && echo ok),ok)
$(error missing packages: run scripts/setup.sh (needs pkg-config $(BASE_PKGS)))
endif

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -O$(O) -g -Wall -Wextra -Werror -fPIC -MMD -MP \
  -Icommon -Ikernels $(SANFLAGS)
CFLAGS += $(CFLAGS_BASE) $(shell pkg-config --cflags $(BASE_PKGS))
# DT_RPATH (not RUNPATH) so that libraries' own dependencies (libzmq -> libsodium) are found
# in the bundle's lib/ too
LDFLAGS += $(SANFLAGS) -Wl,--as-needed -Wl,--disable-new-dtags -Wl,-rpath,'$$ORIGIN/lib'
LDLIBS_BASE := $(shell pkg-config --libs $(BASE_PKGS)) -lpthread -lm

CUDA_HOME ?= /usr/local/cuda
ifeq ($(CUDA),1)
$(info ✓ CUDA backend (nvcc $(NVCC)))
CFLAGS += -DQIE_CUDA -I$(CUDA_HOME)/include
NVCCFLAGS := -O3 -std=c++17 -lineinfo -DQIE_CUDA -Icommon -Ikernels -Xcompiler -fPIC \
  -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_89,code=sm_89
LDLIBS_CUDA := -L$(CUDA_HOME)/lib64 -lnccl -lcublasLt -lcublas -lcudart -lstdc++
KERNELS_CU := $(wildcard kernels/*.cu)
else
KERNELS_CU :=
LDLIBS_CUDA :=
endif

COMMON_SRC := $(wildcard common/*.c) $(wildcard kernels/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o) $(KERNELS_CU:%.cu=$(BUILD)/%.cu.o)
LIBQIE := $(BUILD)/lib/libqie.a

STAGES := $(notdir $(wildcard stages/*))
-include $(wildcard stages/*/stage.mk)

# stage_objs(s): the stage's objects except main
stage_lib = $(BUILD)/lib/libqie_$(1).a
stage_objs = $(patsubst %.c,$(BUILD)/%.o,$(filter-out stages/$(1)/main.c,$(wildcard stages/$(1)/*.c)))
stage_pkgs_cflags = $(if $($(1)_PKGS),$(shell pkg-config --cflags $($(1)_PKGS)))
stage_pkgs_libs = $(if $($(1)_PKGS),$(shell pkg-config --libs $($(1)_PKGS))) $($(1)_LIBS)

ALL_STAGE_PKGS := $(sort $(foreach s,$(STAGES),$($(s)_PKGS)))
ALL_STAGE_LIBS := $(foreach s,$(STAGES),$(call stage_pkgs_libs,$(s)))
ALL_STAGE_CFLAGS := $(if $(ALL_STAGE_PKGS),$(shell pkg-config --cflags $(ALL_STAGE_PKGS)))

BINS := $(STAGES:%=$(BUILD)/bin/qie-%)
STAGE_LIBS := $(foreach s,$(STAGES),$(call stage_lib,$(s)))

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
GPU_TEST_SRC := $(wildcard tests/gpu/test_*.c)
GPU_TEST_BINS := $(GPU_TEST_SRC:tests/gpu/%.c=$(BUILD)/tests-gpu/%)
BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BINS := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BINS := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/bin/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all test-gpu test test-plain test-san clean bundle fuzz demo bench-decode bench-cache bench-pipeline bench-train
ALL_TARGETS := $(BINS) $(TEST_BINS) $(TOOL_BINS) $(BENCH_BINS)
ifeq ($(CUDA),1)
ALL_TARGETS += $(GPU_TEST_BINS)
endif
all: $(ALL_TARGETS)

$(BUILD)/common/%.o $(BUILD)/kernels/%.o: CFLAGS += $(ALL_STAGE_CFLAGS)
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ALL_STAGE_CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(LIBQIE): $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

define STAGE_RULES
# a stage with nothing but main.c still gets an archive (of err.o) so every link line is alike
$(call stage_lib,$(1)): $(call stage_objs,$(1)) | $(BUILD)/common/err.o
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^ $$(if $$^,,$(BUILD)/common/err.o)
$(BUILD)/bin/qie-$(1): $(BUILD)/stages/$(1)/main.o $(call stage_lib,$(1)) $(LIBQIE)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $(call stage_pkgs_libs,$(1)) $$(LDLIBS_BASE) $$(LDLIBS_CUDA)
endef
$(foreach s,$(STAGES),$(eval $(call STAGE_RULES,$(s))))

$(BUILD)/tests/%: tests/%.c $(STAGE_LIBS) $(LIBQIE) tests/testlib.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ALL_STAGE_CFLAGS) -Itests -Istages $(LDFLAGS) -o $@ $< \
	  $(STAGE_LIBS) $(LIBQIE) $(ALL_STAGE_LIBS) $(LDLIBS_BASE) $(LDLIBS_CUDA)

# test-only tools (record generators, fault injectors) live next to the stages in bin/
$(BUILD)/bin/%: tests/tools/%.c $(LIBQIE)
	@mkdir -p $(dir $@)
	@mkdir -p $(BUILD)/tools
	$(CC) $(CFLAGS) -MF $(BUILD)/tools/$*.d $(ALL_STAGE_CFLAGS) $(LDFLAGS) -o $@ $< $(LIBQIE) $(ALL_STAGE_LIBS) $(LDLIBS_BASE) $(LDLIBS_CUDA)

# GPU tests (CPU reference vs CUDA twin on the same inputs): make CUDA=1 test-gpu, on a GPU host
$(BUILD)/tests-gpu/%: tests/gpu/%.c $(STAGE_LIBS) $(LIBQIE) tests/testlib.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ALL_STAGE_CFLAGS) -Itests -Istages $(LDFLAGS) -o $@ $< \
	  $(STAGE_LIBS) $(LIBQIE) $(ALL_STAGE_LIBS) $(LDLIBS_BASE) $(LDLIBS_CUDA)

# benchmark programs (not tests: they print figures, the GPU ones need CUDA=1 and a GPU)
$(BUILD)/bench/%: tests/bench/%.c $(STAGE_LIBS) $(LIBQIE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(ALL_STAGE_CFLAGS) -Itests -Istages $(LDFLAGS) -o $@ $< \
	  $(STAGE_LIBS) $(LIBQIE) $(ALL_STAGE_LIBS) $(LDLIBS_BASE) $(LDLIBS_CUDA)

test-gpu: all
	@p=0; f=0; for t in $(GPU_TEST_BINS); do echo "== $$t"; $$t; done

test-plain: all
	bash tests/run.sh $(BUILD)

test-san:
	$(MAKE) SAN=1 all
	bash tests/run.sh build-san

# make test: the suite plain, then under ASan+UBSan; the last line is the grand total.
test:
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=1 all
	@bash tests/run.sh build build-san

# Fuzz targets (clang + libFuzzer): make fuzz FUZZ_SECONDS=60 [FUZZ=safetensors]
# common/ and kernels/ are compiled into an archive, so a target links only the modules it
# uses (a file that does not compile is skipped with a warning). A crash fails make; its input
# is kept as build/fuzz/<target>-crash-*, the whole log as build/fuzz/<target>.log.
FUZZ_SECONDS ?= 30
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -Icommon -Ikernels $(shell pkg-config --cflags $(BASE_PKGS)) \
  $(ALL_STAGE_CFLAGS)
fuzz:
	@mkdir -p build/fuzz/obj
	@rm -f build/fuzz/libqie_fuzz.a
	@for c in $(COMMON_SRC); do o=build/fuzz/obj/$$(echo $$c | tr / _).o; \
	  if clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c $$c -o $$o; then \
	    ar rcs build/fuzz/libqie_fuzz.a $$o || exit 1; \
	  else echo "fuzz: skipping $$c (does not compile)"; fi; \
	done
	@for f in $(if $(FUZZ),$(filter %/fuzz_$(FUZZ).c,$(FUZZ_SRC)),$(FUZZ_SRC)); do n=$$(basename $$f .c); \
	  clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined $$f build/fuzz/libqie_fuzz.a \
	    $$(pkg-config --libs $(BASE_PKGS)) $(ALL_STAGE_LIBS) -lpthread -lm -o build/fuzz/$$n || exit 1; \
	  mkdir -p build/fuzz/corpus-$$n; \
	  echo "fuzzing $$n for $(FUZZ_SECONDS)s"; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/fuzz/$$n- \
	    build/fuzz/corpus-$$n tests/fuzz/seeds-$$n >build/fuzz/$$n.log 2>&1; rc=$$?; \
	  tail -n 6 build/fuzz/$$n.log; \
	  if [ $$rc -ne 0 ]; then echo "$$n failed (exit $$rc): see build/fuzz/$$n.log"; exit 1; fi; \
	done

# the README's first command (after scripts/setup.sh): the main job on its embedded default
demo: all
	bash scripts/demo.sh

bench-decode: all
	bash scripts/bench_decode.sh

bench-cache: all
	bash scripts/bench_cache.sh

bench-pipeline: all
	bash scripts/bench_pipeline.sh

# the trainer benchmark of docs/benchmarks.md on a GPU host (make CUDA=1 bench-train): qie-train at
# 1024² and 512², then the PyTorch reference in the same run when TRAIN_REF names its script
TRAIN_REF ?= $(wildcard ../shared/bench/reference_transformer_step.py)
bench-train: all
	bash scripts/gpu_train_bench.sh $(BUILD)/bin $(BUILD)/bench-train $(TRAIN_REF)

bundle: all
	bash scripts/bundle.sh $(BUILD) $(BUILD)/bundle

clean:
	rm -rf build build-san

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
