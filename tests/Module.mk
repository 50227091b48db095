# The Catch2 test runner: every tests/*.cpp in one binary, linked with Debian's precompiled
# Catch2 main (compiling Catch's main here would cost about 16 s).
TEST_SOURCES := $(wildcard tests/*.cpp)
TEST_RUNNER := $(BUILD)/tests/run-tests

# The integration tests start the real programs; they find them in this build folder.
$(TEST_SOURCES:%.cpp=$(BUILD)/%.o): CPPFLAGS += -DSHMTUT_BUILD_DIR='"$(abspath $(BUILD))"'

$(TEST_RUNNER): $(TEST_SOURCES:%.cpp=$(BUILD)/%.o) $(COMMON_LIBRARY)
	$(CXX) $(LDFLAGS) $^ -lCatch2WithMain -o $@
