# pagedkv — plain GNU make. Build output goes to $(BUILD) only.
#   make            libraries (build/libpagedkv.a, build/libpagedkv.so) and build/pkv
#   make test       all tests with -Werror      make run     the main job
#   make REDIS=1 ... with the Redis tier (hiredis) in build/redis; make test-redis runs its tests
#   make asan|ubsan|tsan|valgrind               make stress  long seeded model run
#   make bench      benchmarks (JSON on stdout) make install|uninstall PREFIX=/usr/local
#   make check-abi  exported symbols and struct layouts against abi/pagedkv.abi
CC      ?= cc
CFLAGS  ?= -O2 -g
LDFLAGS ?=
# make REDIS=1: the Redis tier (src/tier_redis.c) on hiredis, built in its own
# directory; the default build has no dependency (pkv_tier_redis_open says so).
REDIS   ?=
ifeq ($(REDIS),1)
BUILD   ?= build/redis
else
BUILD   ?= build
endif
PREFIX  ?= /usr/local
VECTORS ?= $(abspath ../shared/vectors)
WERROR  ?=

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes $(WERROR)
BASE    := -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden \
           -Iinclude -Isrc -pthread
LIBS    := -pthread -lm
ifeq ($(REDIS),1)
BASE    += -DPKV_REDIS
LIBS    += -lhiredis
endif
ALL_CFLAGS := $(BASE) $(WARN) $(CFLAGS) $(EXTRA_CFLAGS)

# Kernels for one ISA live in files named *_avx2.c / *_avx512.c and get that ISA's flags;
# everything else is built for the baseline and dispatches at run time.
ISA_AVX2   := -mavx2 -mfma -mf16c
ISA_AVX512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2 \
              -mamx-tile -mamx-bf16

VERSION := $(shell sed -n 's/^\#define PKV_VERSION_STRING "\(.*\)"/\1/p' include/pagedkv.h)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))

LIB_SRC  := $(sort $(wildcard src/*.c src/attn/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
# The .npy reader/writer belongs to the pkv program; tests and fuzz targets reuse it.
NPY_OBJ  := $(BUILD)/obj/src/cli/npy.o
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# Script tests load the shared library from outside (ctypes, the CLI): not under sanitizers.
TEST_SCRIPTS := $(if $(NO_SCRIPTS),,$(sort $(wildcard tests/test_*.py tests/test_*.sh)))
TEST_COMMON_SRC := $(sort $(wildcard tests/common/*.c))
TEST_COMMON_OBJ := $(TEST_COMMON_SRC:%.c=$(BUILD)/obj/%.o) $(NPY_OBJ)
STRESS_SRC := $(sort $(wildcard tests/stress/*.c))
STRESS_BIN := $(STRESS_SRC:tests/stress/%.c=$(BUILD)/stress/%)
BENCH_SRC := $(sort $(wildcard bench/bench_*.c))
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
BENCH_COMMON_SRC := $(sort $(wildcard bench/common/*.c))
BENCH_COMMON_OBJ := $(BENCH_COMMON_SRC:%.c=$(BUILD)/obj/%.o)

EXAMPLE_SRC := $(sort $(wildcard examples/*.c))
EXAMPLE_BIN := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%)

# The shipped libraries export pkv_ names only: the shared one by visibility, the
# static one by linking every object into one (ld -r) and localizing its hidden
# symbols. Tests and benchmarks, which reach internals, link the plain objects
# (the internal archive); it never ships.
STATIC   := $(BUILD)/libpagedkv.a
SONAME   := libpagedkv.so.$(MAJOR)
SHARED   := $(BUILD)/libpagedkv.so.$(VERSION)
INTERNAL := $(BUILD)/libpagedkv_internal.a
PKV      := $(if $(CLI_SRC),$(BUILD)/pkv)

.PHONY: all lib test test-redis tests asan ubsan test-weakhash tsan valgrind stress bench run install uninstall clean \
        fuzz fuzz-run check-abi abi-update
all: lib $(PKV)
lib: $(STATIC) $(SHARED) $(BUILD)/libpagedkv.so

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ISAFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -Isrc/cli -MMD -MP -c $< -o $@

# pkv info reports the flags it was built with.
$(BUILD)/obj/src/cli/info.o: ISAFLAGS = -DPKV_BUILD_CFLAGS='"$(strip $(CFLAGS) $(EXTRA_CFLAGS))"'

$(BUILD)/obj/%_avx2.o: ISAFLAGS = $(ISA_AVX2)
$(BUILD)/obj/%_avx512.o: ISAFLAGS = $(ISA_AVX512)

$(INTERNAL): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(STATIC): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(LD) -r -o $(BUILD)/pagedkv.o $^
	objcopy --localize-hidden $(BUILD)/pagedkv.o
	rm -f $@ && ar rcs $@ $(BUILD)/pagedkv.o

$(SHARED): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) $(CFLAGS) $(EXTRA_CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/libpagedkv.so: $(SHARED)
	ln -sf $(notdir $(SHARED)) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

# pkv links the shipped archive, which defines pkv_ names only: the program
# is built against the public API (a use of an internal fails to link).
$(BUILD)/pkv: $(CLI_OBJ) $(STATIC)
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(STATIC) $(LIBS)

$(BUILD)/tests/%: tests/%.c $(TEST_COMMON_OBJ) $(INTERNAL)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -Isrc/cli -MMD -MP $(LDFLAGS) -o $@ $< $(TEST_COMMON_OBJ) $(INTERNAL) $(LIBS)

$(BUILD)/stress/%: tests/stress/%.c $(TEST_COMMON_OBJ) $(INTERNAL)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -Isrc/cli -MMD -MP $(LDFLAGS) -o $@ $< $(TEST_COMMON_OBJ) $(INTERNAL) $(LIBS)

$(BUILD)/bench/%: bench/%.c $(BENCH_COMMON_OBJ) $(INTERNAL)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ibench -MMD -MP $(LDFLAGS) -o $@ $< $(BENCH_COMMON_OBJ) $(INTERNAL) $(LIBS)

$(BUILD)/examples/%: examples/%.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(STATIC) $(LIBS)

# Objects that only pattern rules name would be deleted as intermediates.
.SECONDARY: $(TEST_COMMON_OBJ) $(BENCH_COMMON_OBJ) $(LIB_OBJ) $(CLI_OBJ)

tests: $(TEST_BIN) $(PKV) $(SHARED) $(BUILD)/libpagedkv.so $(EXAMPLE_BIN)

# The test run: every tests/test_* binary, then a summary line "N passed, N failed".
test:
	@$(MAKE) --no-print-directory WERROR=-Werror tests
	@PKV_VECTORS=$(VECTORS) PKV_BIN=$(PKV) PKV_LIB=$(SHARED) PKV_STATIC=$(STATIC) CC="$(CC)" PKV_LIBS="$(LIBS)" \
	  PKV_BUILD=$(BUILD) PKV_OBJ=$(abspath $(BUILD))/obj/src \
	  sh tests/run.sh $(TEST_BIN) $(TEST_SCRIPTS)

# make test-redis: a standalone server and a 3-master cluster on 127.0.0.1
# (tests/redis_env.sh), make REDIS=1 test against them, the servers stopped after.
test-redis:
	@d=$$(mktemp -d /tmp/pkv-redis.XXXXXX); e=$$(sh tests/redis_env.sh start $$d) || { sh tests/redis_env.sh stop $$d; exit 1; }; \
	  env $$e $(MAKE) --no-print-directory REDIS=1 test; st=$$?; sh tests/redis_env.sh stop $$d; exit $$st

SAN_CC ?= $(CC)
# Sanitizer builds of REDIS=1 live apart from the plain ones (build/redis-asan, ...).
SAN_BUILD := $(if $(filter 1,$(REDIS)),build/redis-,build/)
asan:
	@$(MAKE) --no-print-directory BUILD=$(SAN_BUILD)asan CC=$(SAN_CC) NO_SCRIPTS=1 \
	  CFLAGS="-O1 -g -fsanitize=address -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address" test
ubsan:
	@$(MAKE) --no-print-directory BUILD=$(SAN_BUILD)ubsan CC=$(SAN_CC) NO_SCRIPTS=1 \
	  CFLAGS="-O1 -g -fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=undefined" test
# Prefix keys weakened to 8 bits: collisions everywhere, the token comparison
# must carry correctness (every test still passes).
test-weakhash:
	@$(MAKE) --no-print-directory BUILD=build/weakhash EXTRA_CFLAGS="$(EXTRA_CFLAGS) -DPKV_WEAK_HASH=8" test
tsan:
	@$(MAKE) --no-print-directory BUILD=$(SAN_BUILD)tsan CC=$(SAN_CC) NO_SCRIPTS=1 \
	  CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread" \
	  PKV_TEST_SCALE=$${PKV_TEST_SCALE:-0.1} test
valgrind:
	@$(MAKE) --no-print-directory BUILD=build/valgrind CFLAGS="-O1 -g" tests
	@PKV_VECTORS=$(VECTORS) PKV_TEST_SCALE=$${PKV_TEST_SCALE:-0.02} PKV_ISA=$${PKV_ISA:-avx2} \
	  PKV_WRAP="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect" \
	  sh tests/run.sh $(subst $(BUILD)/,build/valgrind/,$(TEST_BIN))

# libFuzzer targets (clang): `make fuzz` builds build/fuzz/fuzz_{ops,attn,npy} with
# ASan + UBSan; `make fuzz-run SECONDS=N` runs each for N seconds from its seed corpus
# (new inputs go to build/fuzz/corpus) and fails on any crash, leak or sanitizer report.
# The same targets replay their corpus in `make test` (tests/test_fuzz_replay.c).
FUZZ_CC      ?= clang
FUZZ_TARGETS := ops attn npy
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SECONDS      ?= 60
fuzz:
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=$(FUZZ_CC) WERROR=-Werror \
	  CFLAGS="-O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link" build/fuzz/libpagedkv_internal.a \
	  build/fuzz/obj/src/cli/npy.o build/fuzz/obj/tests/common/dump.o
	@for t in $(FUZZ_TARGETS); do \
	  echo "$(FUZZ_CC) -fsanitize=fuzzer ... -o build/fuzz/fuzz_$$t"; \
	  $(FUZZ_CC) $(BASE) $(WARN) -Werror -Itests -Isrc/cli -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer -DPKV_LIBFUZZER \
	    -o build/fuzz/fuzz_$$t tests/fuzz/fuzz_$$t.c build/fuzz/obj/src/cli/npy.o build/fuzz/obj/tests/common/dump.o \
	    build/fuzz/libpagedkv_internal.a $(LIBS) || exit 1; \
	done
fuzz-run: fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t build/fuzz/crash; \
	  echo "== fuzz_$$t: $(SECONDS) s"; \
	  if ! build/fuzz/fuzz_$$t -max_total_time=$(SECONDS) -max_len=4096 -print_final_stats=1 \
	      -artifact_prefix=build/fuzz/crash/$$t- build/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	      > build/fuzz/fuzz_$$t.log 2>&1; then \
	    tail -n 60 build/fuzz/fuzz_$$t.log; echo "fuzz_$$t FAILED (input in build/fuzz/crash/)"; exit 1; fi; \
	  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^Done' build/fuzz/fuzz_$$t.log; \
	done

# Long seeded model runs: sequences (tests/stress) and the prefix cache. Replay a
# failure with STRESS_SEED=<printed seed>.
STRESS_OPS ?= 20000000
STRESS_SEED ?= $(shell date +%s)
STRESS_RUNS := $(STRESS_BIN) $(BUILD)/tests/test_prefix_model
stress: $(STRESS_RUNS)
	@for t in $(STRESS_RUNS); do echo "== $$t --ops $(STRESS_OPS) --seed $(STRESS_SEED)"; \
	  $$t --ops $(STRESS_OPS) --seed $(STRESS_SEED) || exit 1; done

bench: $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b $(BENCH_ARGS) || exit 1; done

run: all
	$(PKV) sim

# Installs the header, both libraries (libpagedkv.so.VERSION with its soname and
# dev links), pagedkv.pc and pkv. The .pc file carries an rpath to PREFIX/lib so
# that `cc app.c $(pkg-config --cflags --libs pagedkv)` runs without ldconfig or
# LD_LIBRARY_PATH for any PREFIX; `pkg-config --static` links libpagedkv.a instead.
INSTALLED := include/pagedkv.h lib/libpagedkv.a lib/libpagedkv.so.$(VERSION) lib/$(SONAME) lib/libpagedkv.so \
             lib/pkgconfig/pagedkv.pc bin/pkv
install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/pagedkv.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libpagedkv.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libpagedkv.so
	install -m 755 $(PKV) $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|^Libs.private:.*|Libs.private: $(LIBS)|' pagedkv.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/pagedkv.pc

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/,$(INSTALLED))

# ABI guard: exported symbols (both libraries), every public struct's layout and
# every enum value against abi/pagedkv.abi; fails on a change without the matching
# version bump (tools/check_abi.py). After a deliberate bump: make abi-update.
check-abi: lib
	python3 tools/check_abi.py --cc "$(CC)" --shared $(SHARED) --static $(STATIC) --soname $(SONAME) abi/pagedkv.abi
abi-update: lib
	python3 tools/check_abi.py --cc "$(CC)" --shared $(SHARED) --static $(STATIC) --soname $(SONAME) --update abi/pagedkv.abi

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- Python package (python/, issue 15) -----------------------------------------
# make python       builds the pagedkv extension in place (python/pagedkv/_pagedkv*.so),
#                   linked against $(STATIC); use it with PYTHONPATH=python
# make test-python  builds it and runs python/tests (pytest, or a plain runner without it)
# make test runs the same through tests/test_python.sh. Debian's python3 has numpy.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
.PHONY: python test-python bench-python clean-python
python: $(STATIC)
	cd python && PKV_STATIC=$(abspath $(STATIC)) PKV_LIBS="$(LIBS)" $(PYTHON) setup.py -q build_ext --inplace --force \
	  --build-temp $(abspath $(BUILD))/python-temp
test-python: $(STATIC) $(SHARED) $(BUILD)/libpagedkv.so
	@PYTHON=$(PYTHON) PKV_VECTORS=$(VECTORS) PKV_LIB=$(SHARED) PKV_STATIC=$(STATIC) CC="$(CC)" PKV_LIBS="$(LIBS)" \
	  sh tests/test_python.sh
bench-python: python
	cd python && $(PYTHON) -m pagedkv.bench
clean: clean-python
clean-python:
	rm -rf python/build python/pagedkv.egg-info python/pagedkv/_pagedkv*.so
