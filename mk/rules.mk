# Shared flags and rules. The top-level Makefile includes this file; a chapter's Module.mk adds
# its programs by naming them:  PROGRAMS += 01-sysv/writer 01-sysv/reader
# and each name P is built from P.cpp into $(BUILD)/P, linked with the common/ library.

BUILD ?= build
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion
ifeq ($(WERROR),1)
WARNINGS += -Werror
endif
CXXFLAGS ?= -O2 -g
CXXFLAGS += -std=c++20 $(WARNINGS)
CPPFLAGS += -Icommon -MMD -MP
ifeq ($(SANITIZE),1)
SANITIZER_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
CXXFLAGS += $(SANITIZER_FLAGS)
LDFLAGS += $(SANITIZER_FLAGS)
endif

COMMON_SOURCES := $(wildcard common/*.cpp)
COMMON_LIBRARY := $(BUILD)/common/libshmtut.a

$(BUILD)/%.o: %.cpp
	@mkdir -p $(@D)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(COMMON_LIBRARY): $(COMMON_SOURCES:%.cpp=$(BUILD)/%.o)
	@rm -f $@
	$(AR) rcs $@ $^

# One binary per named program: $(BUILD)/01-sysv/writer from 01-sysv/writer.cpp.
program_binaries = $(addprefix $(BUILD)/,$(PROGRAMS))

define link_program
$(BUILD)/$(1): $(BUILD)/$(1).o $(COMMON_LIBRARY)
	$$(CXX) $$(LDFLAGS) $$^ -o $$@
endef
