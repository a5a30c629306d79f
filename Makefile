# The two commands README opens with:
#   make run    installs what is missing, builds ./run and generates from the shipped GQA model
#   make test   installs what is missing, builds everything and runs every test suite
CC       = gcc
CFLAGS   = -std=gnu11 -O3 -march=native -Wall -Wextra -Wshadow -fopenmp
CPPFLAGS = -isystem /usr/include/stb
# The plain build (make plain): Part 1 of run.c alone, one thread, no processor-specific flags.
PLAIN_CFLAGS = -std=gnu11 -O3 -Wall -Wextra -Wshadow -fopenmp-simd -DRUN_PLAIN
LDLIBS   = -lpcre2-8 -lm
PYTHON   = /usr/bin/python3
MODEL    = model/shakespeare-gqa.bin
PROMPT   = Fear is

.PHONY: all run build plain test test-explorer mutate models compare bench bench-context deps-build deps-test deps-train format clean

all: build

run: deps-build build
	./run $(MODEL) -p "$(PROMPT)"

# The program is called run, like the target above, so this phony target rebuilds it by hand
# whenever run.c is newer.
build:
	@if [ ! -x run ] || [ run.c -nt run ]; then \
		echo "$(CC) $(CFLAGS) $(CPPFLAGS) -o run run.c $(LDLIBS)"; \
		$(CC) $(CFLAGS) $(CPPFLAGS) -o run run.c $(LDLIBS); \
	fi

# ./run-plain: the same run.c with -DRUN_PLAIN, where every product, norm, softmax, activation
# and attention step runs through Part 1's own functions (see README, "Reading run.c").
plain:
	@if [ ! -x run-plain ] || [ run.c -nt run-plain ]; then \
		echo "$(CC) $(PLAIN_CFLAGS) $(CPPFLAGS) -o run-plain run.c $(LDLIBS)"; \
		$(CC) $(PLAIN_CFLAGS) $(CPPFLAGS) -o run-plain run.c $(LDLIBS); \
	fi

tests/test_run_plain: tests/test_run.c run.c
	$(CC) $(PLAIN_CFLAGS) -O2 -Wno-unused-function $(CPPFLAGS) $$(pkg-config --cflags check) -o $@ \
		tests/test_run.c $$(pkg-config --libs check) $(LDLIBS)

tests/test_run: tests/test_run.c run.c
	$(CC) $(CFLAGS) -O2 -Wno-unused-function $(CPPFLAGS) $$(pkg-config --cflags check) -o $@ tests/test_run.c \
		$$(pkg-config --libs check) $(LDLIBS)

test: deps-test build plain tests/test_run tests/test_run_plain
	tests/test_install_deps.sh
	$(PYTHON) tests/test_twin.py
	$(PYTHON) tests/test_twin.py --run ./run-plain
	$(PYTHON) tests/test_convert.py
	$(PYTHON) tests/test_gguf_writer.py
	$(PYTHON) tests/test_gguf.py
	$(PYTHON) tests/ggml_quants.py
	$(PYTHON) tests/test_quants.py
	$(PYTHON) tests/test_quants.py --run ./run-plain
	$(PYTHON) tests/test_arch.py
	$(PYTHON) tests/test_arch.py --run ./run-plain
	$(PYTHON) tests/test_import.py
	@[ -d tests/tokenizers/node_modules ] || npm ci --prefix tests/tokenizers --no-audit --no-fund \
		|| echo "make test: npm ci failed; the comparisons with Hugging Face's tokenizers are skipped"
	$(PYTHON) tests/test_tokenizers.py
	$(PYTHON) tests/test_plot_attention.py
	$(MAKE) --no-print-directory test-asan test-valgrind
	./tests/test_run
	RUN_BINARY=./run-plain ./tests/test_run_plain
	tests/test_hostile.sh
	$(MAKE) --no-print-directory test-explorer

# The attention explorer (scripts/explore.sh): its page for the shipped models, opened in headless
# Chromium, against ./run's --attn tables.
test-explorer: deps-test build
	tests/test_explorer.sh

# Mutation testing (not part of make test: about a minute per mutation): every semantic mutation
# of run.c in tests/mutations.txt must fail a test.
mutate: deps-test
	@[ -d tests/tokenizers/node_modules ] || npm ci --prefix tests/tokenizers --no-audit --no-fund \
		|| echo "make mutate: npm ci failed; the comparisons with Hugging Face's tokenizers are skipped"
	tests/mutate.sh

# Retrain the tokenizer (if missing) and the three shipped models: about 1.5 hours on 2 cores.
models: deps-train
	model/train_all.sh

# The comparison table of README.md: the shipped models and their MHA conversions. About 8 minutes
# on 2 idle cores (model/uptrain.sh about 6, scripts/compare.sh about 2); far longer when other
# jobs share the cores (24 minutes measured with about four others running).
compare: deps-train build
	model/uptrain.sh
	scripts/compare.sh model/shakespeare-mha.bin model/shakespeare-gqa.bin \
		model/shakespeare-mqa.bin model/runs/mha-to-gqa.bin model/runs/mha-to-mqa.bin \
		model/shakespeare-mha-to-gqa.bin model/shakespeare-mha-to-mqa.bin

# The speed table of README.md: random-weight models at llama2.c's shapes.
bench: deps-bench build
	scripts/bench.sh

# Decoding at length (README, "MHA, GQA and MQA at length"): MHA, GQA and MQA models from 256 to
# 32k positions with fp32, fp16 and q8 KV caches, and a plot. QUICK=1 takes a few minutes.
bench-context: deps-bench build
	scripts/bench_context.sh

deps-train:
	@scripts/install-deps.sh train

deps-bench:
	@scripts/install-deps.sh bench

deps-build:
	@scripts/install-deps.sh build

deps-test:
	@scripts/install-deps.sh test

format:
	clang-format -i run.c tests/*.c

clean:
	rm -f run run-plain tests/test_run tests/test_run_plain

# ----------------------------------------------------------------------------
# Robustness: sanitizers, valgrind and fuzzing (make test runs the first two)

.PHONY: test-asan test-valgrind fuzz deps-fuzz clean-robustness

# The Check suite and ./run built with AddressSanitizer and UndefinedBehaviorSanitizer (gcc's:
# libasan and libubsan come with gcc on Debian and Ubuntu). The later -O1 overrides CFLAGS' -O3.
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1

tests/asan/run: run.c
	@mkdir -p tests/asan
	$(CC) $(CFLAGS) $(SANITIZE) $(CPPFLAGS) -o $@ run.c $(LDLIBS)

tests/asan/test_run: tests/test_run.c run.c
	@mkdir -p tests/asan
	$(CC) $(CFLAGS) $(SANITIZE) -Wno-unused-function $(CPPFLAGS) $$(pkg-config --cflags check) -o $@ \
		tests/test_run.c $$(pkg-config --libs check) $(LDLIBS)

# Sanitizer options, the same for the suite and for the ./run its command-line tests start:
# - detect_leaks=1 everywhere. Check runs each test in a forked child (CK_FORK=yes, in case the
#   environment says otherwise), and LeakSanitizer checks each child as it exits: a leak fails
#   that test ("Early exit"). Check's own memory is still reachable from its runner then, so it
#   needs no suppressions; in CK_FORK=no mode, by contrast, one sanitizer abort would end the
#   whole suite and leaks would be checked only once, at its end.
# - exitcode=86: a sanitizer's exit status must differ from run's own 1 (bad data) and 2 (bad
#   usage), which the command-line tests expect in their error cases.
# - AddressSanitizer and LeakSanitizer reports go to files in tests/asan/logs/ (log_path), not to
#   stderr: the command-line tests capture and discard ./run's stderr, and a report must not pass
#   unseen. Any file there fails the target, whatever the tests concluded, and is printed.
# - gcc's UBSan runtime ignores log_path when AddressSanitizer is linked too, and reports on
#   stderr: the suite's output is kept in tests/asan/test_run.log and any "runtime error:" in it
#   fails the target; in ./run, -fno-sanitize-recover ends the program with status 86, which the
#   command-line tests see as a wrong exit status (rerun that command with tests/asan/run to read
#   the report).
ASAN_LOGS = $(CURDIR)/tests/asan/logs
ASAN_ENV = CK_FORK=yes \
	ASAN_OPTIONS=detect_leaks=1:exitcode=86:allocator_may_return_null=1:log_path=$(ASAN_LOGS)/asan \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
	LSAN_OPTIONS=exitcode=86

test-asan: deps-test tests/asan/run tests/asan/test_run
	@rm -rf $(ASAN_LOGS) tests/asan/test_run.log && mkdir -p $(ASAN_LOGS)
	@echo "RUN_BINARY=tests/asan/run ./tests/asan/test_run  (AddressSanitizer, UBSan, LeakSanitizer)"
	@{ $(ASAN_ENV) RUN_BINARY=tests/asan/run ./tests/asan/test_run; echo $$? >tests/asan/status; } \
		2>&1 | tee tests/asan/test_run.log; \
	status=$$(cat tests/asan/status); reports=0; \
	if grep -q "runtime error:" tests/asan/test_run.log; then \
		echo "test-asan: UBSan reports above"; status=1; \
	fi; \
	for report in $(ASAN_LOGS)/*; do \
		[ -f "$$report" ] || continue; \
		reports=$$((reports + 1)); status=1; \
		echo "test-asan: sanitizer report $$report:"; \
		if [ $$reports -le 2 ]; then cat "$$report"; else grep SUMMARY "$$report"; fi; \
	done; \
	[ $$reports -gt 0 ] && echo "test-asan: $$reports sanitizer reports, in $(ASAN_LOGS)"; \
	[ $$status -eq 0 ] && echo "test-asan: no sanitizer reports"; \
	exit $$status

# valgrind 3.19 cannot execute AVX-512, which -march=native may emit: this build leaves it out.
tests/valgrind/run: run.c
	@mkdir -p tests/valgrind
	$(CC) $(filter-out -march=native,$(CFLAGS)) -O2 -g $(CPPFLAGS) -o $@ run.c $(LDLIBS)

test-valgrind: deps-test tests/valgrind/run
	RUN_BINARY=tests/valgrind/run tests/valgrind.sh

# libFuzzer targets (clang) in tests/fuzz/: each replays tests/fuzz/regressions/, then fuzzes for
# FUZZ_SECONDS from a scratch copy of its corpus. make fuzz FUZZ_SECONDS=600 for a longer run;
# FUZZ_TARGETS=cli for one target. -march=native, as in the default build, so that the targets
# reach the processor's fast kernels (the AVX-512 block products read a file's bytes too).
FUZZ_CC      = clang
FUZZ_SECONDS = 60
FUZZ_TARGETS = checkpoint tokenizer encode cli bpe
FUZZ_FLAGS   = -std=gnu11 -g -O1 -march=native -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all -Wall -Wextra -Wno-unused-function -Wno-unknown-pragmas

tests/fuzz/build/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h run.c
	@mkdir -p tests/fuzz/build
	$(FUZZ_CC) $(FUZZ_FLAGS) $(CPPFLAGS) -o $@ $< $(LDLIBS)

fuzz: deps-fuzz $(FUZZ_TARGETS:%=tests/fuzz/build/fuzz_%)
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_TARGETS)

deps-fuzz:
	@scripts/install-deps.sh fuzz

clean: clean-robustness
clean-robustness:
	rm -rf tests/asan tests/valgrind tests/fuzz/build tests/fuzz/artifacts
