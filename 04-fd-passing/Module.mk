# Chapter 04: passing the memfd over a Unix domain socket (SCM_RIGHTS).
# Step 1, the bare pair (hello_writer, hello_reader); step 2, the full pair (writer, reader).
PROGRAMS += 04-fd-passing/hello_writer 04-fd-passing/hello_reader 04-fd-passing/writer 04-fd-passing/reader
CHAPTERS += 04-fd-passing

HELLO_04_SOCKET := /tmp/shm-tutorial-04-hello.sock

# The bare writer prints one line once it listens; the reader starts when that line arrives.
.PHONY: hello-04
hello-04: $(BUILD)/04-fd-passing/hello_writer $(BUILD)/04-fd-passing/hello_reader ## run chapter 04's bare pair (step 1) in one terminal
	@set -o pipefail; $(BUILD)/04-fd-passing/hello_writer $(HELLO_04_SOCKET) 2>&1 | \
		{ IFS= read -r line && echo "$$line" && $(BUILD)/04-fd-passing/hello_reader $(HELLO_04_SOCKET); status=$$?; cat; exit $$status; }
