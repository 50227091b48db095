# Chapter 01: System V shared memory and semaphores.
# Step 1, the bare pair (libc only: the common/ archive is on their link line, but they use
# nothing from it, so nothing from it is linked in); step 2, the full pair.
PROGRAMS += 01-sysv/hello_writer 01-sysv/hello_reader
PROGRAMS += 01-sysv/writer 01-sysv/reader
CHAPTERS += 01-sysv

# The chapter's test checks that the notes quote the bare pair exactly as it is in the files.
$(BUILD)/tests/test_01_sysv.o: CPPFLAGS += -DSHMTUT_SOURCE_DIR='"$(abspath .)"'

HELLO_01 := $(BUILD)/01-sysv/hello_writer $(BUILD)/01-sysv/hello_reader

.PHONY: hello-01
hello-01: $(HELLO_01) ## run chapter 01's bare pair (step 1) in one terminal
	@echo "=== 01-sysv step 1: hello_writer in the background, hello_reader a second later ==="
	@$(BUILD)/01-sysv/hello_writer & writer=$$!; \
	sleep 1; \
	$(BUILD)/01-sysv/hello_reader; reader_status=$$?; \
	if [ $$reader_status -ne 0 ]; then kill $$writer; fi; \
	wait $$writer; writer_status=$$?; \
	echo "=== hello_writer exited $$writer_status, hello_reader exited $$reader_status"; \
	if [ $$reader_status -ne 0 ]; then echo "=== the bare writer was killed and left its objects: see ipcs -m -s, remove them with ipcrm"; fi; \
	[ $$writer_status -eq 0 ] && [ $$reader_status -eq 0 ]
