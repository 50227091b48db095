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
