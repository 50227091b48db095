# Cross builds and the suite on ARM under qemu-user.
#
#   make CROSS=aarch64-linux-gnu-        every program and the test runner for arm64, in build/arm64
#   make CROSS=arm-linux-gnueabihf-      the same for 32-bit ARM (armhf), in build/armhf
#   make test-cross ARCH=arm64           build for ARCH and run the whole suite under qemu-user
#   make test-cross ARCH=armhf
#
# The top-level Makefile includes this file before mk/rules.mk, so that BUILD, CXX and AR are the
# cross ones before any rule uses them.

# The build folder is known here already (mk/rules.mk sets the same default), for the rules of
# interop/Module.mk, included at the end.
BUILD ?= build

CROSS_TRIPLET_arm64 := aarch64-linux-gnu
CROSS_TRIPLET_armhf := arm-linux-gnueabihf
CROSS_QEMU_arm64 := qemu-aarch64-static
CROSS_QEMU_armhf := qemu-arm-static

ifneq ($(CROSS),)
CROSS_ARCH := $(strip $(foreach arch,arm64 armhf,$(if $(filter $(CROSS_TRIPLET_$(arch))-,$(CROSS)),$(arch))))
ifeq ($(CROSS_ARCH),)
$(error CROSS=$(CROSS) is not one of aarch64-linux-gnu- arm-linux-gnueabihf-)
endif
BUILD := build/$(CROSS_ARCH)
CXX := $(CROSS)g++
AR := $(CROSS)ar
# 32-bit ARM: a 64-bit off_t (files and shared objects past 2 GiB: without it fstat fails with
# EOVERFLOW) and a 64-bit time_t (deadlines past January 2038), as Debian 13 builds armhf.
ifeq ($(CROSS_ARCH),armhf)
CPPFLAGS += -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
endif

# Catch2: Debian packages it for the build machine only (libCatch2WithMain.a is an x86-64
# archive). Version 2 is a single header, though, so the cross build compiles that header's own
# main once with the cross compiler. The header is reached through a folder that holds only
# catch2/, so that no other header of the build machine can slip into a cross build.
ifeq ($(wildcard /usr/include/catch2/catch.hpp),)
$(error a cross build needs Catch2 version 2 (Debian 12: apt-get install catch2), a single header)
endif
CROSS_INCLUDE := $(BUILD)/include
CROSS_CATCH_MAIN := $(BUILD)/tests/catch-main.o
CATCH2_LIBS :=

$(CROSS_INCLUDE)/catch2:
	@mkdir -p $(@D)
	ln -sfn /usr/include/catch2 $@

$(CROSS_CATCH_MAIN): | $(CROSS_INCLUDE)/catch2
	@mkdir -p $(@D)
	printf '#define CATCH_CONFIG_MAIN\n#include <catch2/catch.hpp>\n' | \
		$(CXX) $(filter -D%,$(CPPFLAGS)) -std=c++20 -O1 -isystem $(CROSS_INCLUDE) -x c++ -c - -o $@

$(BUILD)/tests/run-tests: $(CROSS_CATCH_MAIN)
$(BUILD)/tests/%.o: CPPFLAGS += -isystem $(CROSS_INCLUDE)
$(BUILD)/tests/%.o: | $(CROSS_INCLUDE)/catch2
endif

.PHONY: test-cross
test-cross: ## build for ARCH=arm64 or armhf and run the whole suite under qemu-user
	@case "$(ARCH)" in arm64|armhf) ;; *) echo "make test-cross: say ARCH=arm64 or ARCH=armhf" >&2; exit 2;; esac
	@scripts/ensure-packages "the $(ARCH) suite: a cross compiler, Catch2's header and qemu-user to run it" \
		g++-$(CROSS_TRIPLET_$(ARCH)) catch2 qemu-user-static
	@$(MAKE) --no-print-directory CROSS=$(CROSS_TRIPLET_$(ARCH))- test-binaries
	@scripts/test-cross $(ARCH) $(CROSS_QEMU_$(ARCH)) /usr/$(CROSS_TRIPLET_$(ARCH)) $(TESTS)
include interop/Module.mk
