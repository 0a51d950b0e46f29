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

.PHONY: all deps run test asan bench lint clean default-data
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

test: deps all
	@BUILD=$(BUILD) tests/run.sh

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test

lint:
	@tools/lint.sh

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Benchmarks print "BENCH <name> <value> <unit>" lines (not a timed test; run on an idle
# machine). bench-data/ holds the synthetic bench model (~800 MB) and 32 rank-16 adapters,
# generated once by tools/make_bench_model.py; bench_batch measures heterogeneous batched
# decode against the memory bandwidth, bench_decode single-stream decode and prefill.
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
	@/usr/bin/python3 tools/make_bench_model.py bench-data --store-adapters --zipf-adapters 1000
	$(BUILD)/tests/bench_store_load bench-data 100
	$(BUILD)/tests/bench_zipf bench-data data/model/tokenizer.json 16 400 100
	@echo "# fair share: a victim tenant's p50 latency while another tenant floods (--max-seqs 4)"
	@/usr/bin/python3 tests/integration/test_fairshare.py | grep -E '^(BENCH|# fairshare)' 
