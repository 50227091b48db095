# Chapter 05: dma-buf from a heap or from a memfd (udmabuf), passed as in chapter 04.
# Step 1, the bare pair (hello_writer, hello_reader); step 2, the full pair (writer, reader).
PROGRAMS += 05-dma-buf/hello_writer 05-dma-buf/hello_reader 05-dma-buf/writer 05-dma-buf/reader
CHAPTERS += 05-dma-buf

HELLO_05_SOCKET := /tmp/shm-tutorial-05-hello.sock

# The writer exits 77 where this machine cannot make a dma-buf: the pair is then skipped.
.PHONY: hello-05
hello-05: $(BUILD)/05-dma-buf/hello_writer $(BUILD)/05-dma-buf/hello_reader ## step 1 of chapter 05: the bare pair (skipped without dma-buf)
	@$(BUILD)/05-dma-buf/hello_writer $(HELLO_05_SOCKET) & writer=$$!; \
	for i in $$(seq 100); do [ -S $(HELLO_05_SOCKET) ] || ! kill -0 $$writer 2>/dev/null && break; sleep 0.1; done; \
	if [ ! -S $(HELLO_05_SOCKET) ]; then wait $$writer; status=$$?; \
		if [ $$status -eq 77 ]; then echo "hello-05: skipped: this machine cannot make a dma-buf (make vm-05 runs it)"; exit 0; fi; \
		exit $$status; fi; \
	sleep 0.1; $(BUILD)/05-dma-buf/hello_reader $(HELLO_05_SOCKET); status=$$?; wait $$writer && exit $$status
