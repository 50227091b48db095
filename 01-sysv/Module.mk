# Chapter 01: System V shared memory and semaphores.
# Step 1, the bare pair (libc only: the common/ archive is on their link line, but they use
# nothing from it, so nothing from it is linked in); step 2, the full pair.
PROGRAMS += 01-sysv/hello_writer 01-sysv/hello_reader
PROGRAMS += 01-sysv/writer 01-sysv/reader
CHAPTERS += 01-sysv

.PHONY: hello-01
# The writer says on stderr when the message is in place; only then does the reader start (the
# bare reader does not wait for a writer), and not at all if the writer failed instead (its
# error is then the first line). `cat` shows whatever the writer says after that.
hello-01: $(BUILD)/01-sysv/hello_writer $(BUILD)/01-sysv/hello_reader ## run chapter 01's bare pair (step 1) in one terminal
	@set -o pipefail; $(BUILD)/01-sysv/hello_writer 2>&1 | \
		{ IFS= read -r line && echo "$$line" && [[ $$line == hello_writer:* ]] && $(BUILD)/01-sysv/hello_reader; \
		  status=$$?; cat; exit $$status; }
