# Linux shared memory, one chapter per technique. `make help` lists the targets.
#
#   make            build every chapter's writer and reader into build/
#   make run        run every chapter's demo pair, in order
#   make test       build and run the tests (installs Debian's catch2 when missing)
#
# Options: WERROR=1 turns warnings into errors (CI does); TESTS='[01]' runs only matching tests.

.DEFAULT_GOAL := all
SHELL := /bin/bash

# Build on every core unless told otherwise (make -j1): the test target's recursive make shares
# the same job slots through make's jobserver. Only for one goal at a time: with several
# (make clean all), GNU make 4.3 would run the goals themselves at once.
ifeq ($(MAKELEVEL),0)
ifeq ($(filter -j%,$(MAKEFLAGS)),)
ifeq ($(filter-out 0 1,$(words $(MAKECMDGOALS))),)
MAKEFLAGS += -j$(shell nproc)
endif
endif
endif

include mk/cross.mk
include mk/rules.mk
include 00-same-page/Module.mk
include 01-sysv/Module.mk
include 02-posix-mmap/Module.mk
include 03-memfd/Module.mk
include 04-fd-passing/Module.mk
include 05-dma-buf/Module.mk
include 06-zero-copy/Module.mk
include tools/Module.mk
include labs/Module.mk
include tests/Module.mk
include mk/workshop.mk

BINARIES := $(call program_binaries)
$(foreach program,$(PROGRAMS),$(eval $(call link_program,$(program))))

.PHONY: all run run-01 run-02 run-03 run-04 run-05 vm-05 test check docs clean help

all: $(BINARIES) ## build every chapter's programs into build/

run: $(BINARIES) ## run every chapter's demo pair in order; a chapter that exits 77 is skipped
	@scripts/run-demos $(BUILD) $(CHAPTERS)

run-01: $(filter $(BUILD)/01-sysv/%,$(BINARIES)) ## run chapter 01's pair: System V shared memory
	@scripts/run-demos $(BUILD) 01-sysv

run-02: $(filter $(BUILD)/02-posix-mmap/%,$(BINARIES)) ## run chapter 02's pair: POSIX shared memory and mmap
	@scripts/run-demos $(BUILD) 02-posix-mmap

run-03: $(filter $(BUILD)/03-memfd/%,$(BINARIES)) ## run chapter 03's pair: memfd, seals and a futex
	@scripts/run-demos $(BUILD) 03-memfd

run-04: $(filter $(BUILD)/04-fd-passing/%,$(BINARIES)) ## run chapter 04's pair: a memfd passed over a Unix socket
	@scripts/run-demos $(BUILD) 04-fd-passing

run-05: $(filter $(BUILD)/05-dma-buf/%,$(BINARIES)) ## run chapter 05's pair: dma-buf (skipped where no dma-buf device can be opened)
	@scripts/run-demos $(BUILD) 05-dma-buf

vm-05: ## run chapters 05 and 01-04 in a tiny VM with dma-buf (the first run builds a kernel: minutes)
	@05-dma-buf/vm/run-vm

test: ## build and run the tests; the last line says "N passed, N failed, N skipped"
	@scripts/ensure-packages "Catch2 is the test framework of make test" catch2
	@$(MAKE) --no-print-directory test-binaries
	@scripts/run-tests $(TEST_RUNNER) $(TESTS)

check: ## the same tests built with AddressSanitizer and UBSan into build/check
	@scripts/ensure-packages "Catch2 is the test framework of make check" catch2
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/check SANITIZE=1 test-binaries
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
		scripts/run-tests $(BUILD)/check/tests/run-tests $(TESTS)

# The programs and the test runner, built after ensure-packages has installed Catch2. The empty
# recipe keeps make from saying "is up to date" for each of them.
.PHONY: test-binaries
test-binaries: $(BINARIES) $(TEST_RUNNER)
	@:

# The site is checked as a reader sees it: scripts/check-site renders every page in headless
# Chromium (Noto CJK draws the Chinese pages; cmark-gfm says how GitHub renders the same notes).
docs: ## build the documentation site into build/docs/html and check every page in a browser (garbled pages, broken links)
	@scripts/ensure-packages "Doxygen and Graphviz build the documentation site; Python, headless Chromium, the Noto CJK fonts and cmark-gfm check it" \
		doxygen graphviz python3 chromium fonts-noto-cjk fontconfig cmark-gfm
	@scripts/check-translations .
	@rm -rf $(BUILD)/docs/html # a page left from an earlier build is not part of this site
	@mkdir -p $(BUILD)/docs
	(cat docs/Doxyfile; echo "OUTPUT_DIRECTORY = $(BUILD)/docs") | doxygen -
	@scripts/check-site $(BUILD)/docs/html .

clean: ## remove build/
	rm -rf $(BUILD)

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /  make \1\t/' | expand -t 20

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
