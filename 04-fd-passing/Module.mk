# Chapter 04: passing the memfd over a Unix domain socket (SCM_RIGHTS).
# Step 1, the bare pair (hello_writer, hello_reader); step 2, the full pair (writer, reader).
PROGRAMS += 04-fd-passing/hello_writer 04-fd-passing/hello_reader 04-fd-passing/writer 04-fd-passing/reader
CHAPTERS += 04-fd-passing

HELLO_04_SOCKET := /tmp/shm-tutorial-04-hello.sock

.PHONY: hello-04
hello-04: $(BUILD)/04-fd-passing/hello_writer $(BUILD)/04-fd-passing/hello_reader ## step 1 of chapter 04: the bare pair
	@$(BUILD)/04-fd-passing/hello_writer $(HELLO_04_SOCKET) & \
	until [ -S $(HELLO_04_SOCKET) ]; do sleep 0.1; done; sleep 0.1; \
	$(BUILD)/04-fd-passing/hello_reader $(HELLO_04_SOCKET); status=$$?; wait $$! && exit $$status
