# Chapter 02: POSIX shared memory (shm_open + mmap) with semaphores inside the mapping.
# Step 1 is the bare pair (hello_writer, hello_reader); step 2 the full pair (writer, reader).
PROGRAMS += 02-posix-mmap/hello_writer 02-posix-mmap/hello_reader 02-posix-mmap/writer 02-posix-mmap/reader
CHAPTERS += 02-posix-mmap

.PHONY: hello-02
# The writer says it waits once the message and the semaphore are in place; only then does the
# reader start (the bare pair has no other way to meet). `cat` shows what the writer says after.
hello-02: $(BUILD)/02-posix-mmap/hello_writer $(BUILD)/02-posix-mmap/hello_reader ## run chapter 02's bare pair (step 1)
	@set -o pipefail; $(BUILD)/02-posix-mmap/hello_writer 2>&1 | \
		{ IFS= read -r line && echo "$$line" && $(BUILD)/02-posix-mmap/hello_reader; status=$$?; cat; exit $$status; }
