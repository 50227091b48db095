# Chapter 05: dma-buf from a heap or from a memfd (udmabuf), passed as in chapter 04.
# Step 1, the bare pair (hello_writer, hello_reader); step 2, the full pair (writer, reader).
PROGRAMS += 05-dma-buf/hello_writer 05-dma-buf/hello_reader 05-dma-buf/writer 05-dma-buf/reader
CHAPTERS += 05-dma-buf

HELLO_05_SOCKET := /tmp/shm-tutorial-05-hello.sock

# The bare writer prints one line once it listens (the reader starts then), or why it cannot
# make a dma-buf, exiting 77: the pair is then skipped.
.PHONY: hello-05
hello-05: $(BUILD)/05-dma-buf/hello_writer $(BUILD)/05-dma-buf/hello_reader ## run chapter 05's bare pair (step 1; skipped without dma-buf)
	@set -o pipefail; $(BUILD)/05-dma-buf/hello_writer $(HELLO_05_SOCKET) 2>&1 | \
		{ IFS= read -r line; echo "$$line"; case "$$line" in *listening*) ;; *) cat; exit 0;; esac; \
		  $(BUILD)/05-dma-buf/hello_reader $(HELLO_05_SOCKET); status=$$?; cat; exit $$status; }; status=$$?; \
	if [ $$status -eq 77 ]; then echo "hello-05: skipped: this machine cannot make a dma-buf (make vm-05 runs it)"; exit 0; fi; \
	exit $$status
