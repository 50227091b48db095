# The Catch2 test runner: every tests/*.cpp in one binary, linked with Debian's precompiled
# Catch2 main (compiling Catch's main here would cost about 16 s).
TEST_SOURCES := $(wildcard tests/*.cpp)
TEST_RUNNER := $(BUILD)/tests/run-tests

# The integration tests start the real programs; they find them in this build folder, and the
# scripts and notes in the source folder.
$(TEST_SOURCES:%.cpp=$(BUILD)/%.o): CPPFLAGS += -DSHMTUT_BUILD_DIR='"$(abspath $(BUILD))"' \
	-DSHMTUT_SOURCE_DIR='"$(abspath .)"'

$(TEST_RUNNER): $(TEST_SOURCES:%.cpp=$(BUILD)/%.o) $(COMMON_LIBRARY)
	$(CXX) $(LDFLAGS) $^ $(CATCH2_LIBS) -o $@

# Catch2 v3 splits the main from the library; v2 (Debian 12) ships one library with the main.
CATCH2_LIBS ?= $(if $(wildcard /usr/include/catch2/catch_all.hpp),-lCatch2Main -lCatch2,-lCatch2WithMain)

# The launcher the tests start programs through to make a system call fail (a seccomp filter)
# or to stop a program at a chosen system call (ptrace): tests/launcher/launch.cpp.
TEST_LAUNCHER := $(BUILD)/tests/launch
$(TEST_LAUNCHER): $(BUILD)/tests/launcher/launch.o
	$(CXX) $(LDFLAGS) $^ -o $@
$(TEST_RUNNER): | $(TEST_LAUNCHER)
