# The two commands README opens with:
#   make run    installs what is missing, builds ./run and generates from the shipped GQA model
#   make test   installs what is missing, builds everything and runs every test suite
CC       = gcc
CFLAGS   = -std=gnu11 -O3 -march=native -Wall -Wextra -fopenmp
CPPFLAGS = -isystem /usr/include/stb
LDLIBS   = -lm
PYTHON   = /usr/bin/python3
MODEL    = model/shakespeare-gqa.bin
PROMPT   = Fear is

.PHONY: all run build test deps-build deps-test format clean

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

tests/test_run: tests/test_run.c run.c
	$(CC) $(CFLAGS) -O2 -Wno-unused-function $(CPPFLAGS) $$(pkg-config --cflags check) -o $@ tests/test_run.c \
		$$(pkg-config --libs check) $(LDLIBS)

test: deps-test build tests/test_run
	$(PYTHON) tests/test_twin.py
	./tests/test_run

deps-build:
	@scripts/install-deps.sh build

deps-test:
	@scripts/install-deps.sh test

format:
	clang-format -i run.c tests/*.c

clean:
	rm -f run tests/test_run
