# Chapter 06: a zero-copy buffer pool passed once over a socket, then only indices; and the
# benchmark of every technique (make bench).
PROGRAMS += 06-zero-copy/hello_writer 06-zero-copy/hello_reader 06-zero-copy/writer 06-zero-copy/reader
CHAPTERS += 06-zero-copy


HELLO_06_SOCKET := /tmp/shm-tutorial-06-hello.sock

.PHONY: hello-06 run-06
hello-06: $(BUILD)/06-zero-copy/hello_writer $(BUILD)/06-zero-copy/hello_reader ## step 1 of chapter 06: the bare pool pair
	@$(BUILD)/06-zero-copy/hello_writer $(HELLO_06_SOCKET) & writer=$$!; \
	for i in $$(seq 100); do [ -S $(HELLO_06_SOCKET) ] && break; sleep 0.05; done; \
	$(BUILD)/06-zero-copy/hello_reader $(HELLO_06_SOCKET); reader=$$?; wait $$writer; writer_status=$$?; \
	[ $$reader -eq 0 ] && [ $$writer_status -eq 0 ]

run-06: $(filter $(BUILD)/06-zero-copy/%,$(BINARIES)) ## run chapter 06's pair: a buffer pool passed once, then indices
	@scripts/run-demos $(BUILD) 06-zero-copy

# make bench: one program (Google Benchmark) measures every technique side by side; it needs
# libbenchmark-dev to build and gnuplot-nox to draw, both installed by the target.
BENCH := $(BUILD)/06-zero-copy/bench
$(BENCH): $(BUILD)/06-zero-copy/bench.o
	$(CXX) $(LDFLAGS) $^ -lbenchmark -lpthread -o $@

.PHONY: bench bench-programs
bench-programs: $(call program_binaries) $(BENCH) # every program included so far: chapters 01 to 06
	@:
bench: ## measure every technique side by side (QUICK=1: under a minute); CSV and PNG plots in build/bench
	@scripts/ensure-packages "make bench runs on Google Benchmark and draws its plots with gnuplot" libbenchmark-dev gnuplot-nox
	@$(MAKE) --no-print-directory bench-programs
	$(BENCH) $(if $(filter 1,$(QUICK)),--quick) --out $(BUILD)/bench --build $(BUILD)

# Where Google Benchmark is installed, the test runner's smoke test [06][bench] runs the
# benchmark too, so make test builds it.
# (Not in a cross build: Debian's libbenchmark is for the build machine only.)
ifneq ($(wildcard /usr/include/benchmark/benchmark.h),)
ifeq ($(CROSS),)
$(BUILD)/tests/run-tests: | $(BENCH)
endif
endif
