# Chapter 03: memfd_create, file seals and a raw futex.
# Step 1, the bare pair: hello_writer and hello_reader. Step 2, the full pair: writer and reader.
PROGRAMS += 03-memfd/hello_writer 03-memfd/hello_reader
PROGRAMS += 03-memfd/writer 03-memfd/reader 03-memfd/atomic_wait_experiment
CHAPTERS += 03-memfd

# The writer prints the reader's command on its stdout and waits; the reader runs it here.
.PHONY: hello-03
hello-03: $(BUILD)/03-memfd/hello_writer $(BUILD)/03-memfd/hello_reader ## run chapter 03's bare pair (step 1) in one terminal
	@coproc writer { $(BUILD)/03-memfd/hello_writer; }; \
	writer_pid=$$writer_PID; \
	read -r command <&"$${writer[0]}"; \
	echo "hello_writer printed: $$command"; \
	set -- $$command; \
	$(BUILD)/03-memfd/hello_reader "$$2" "$$3" || { kill "$$writer_pid"; wait "$$writer_pid"; exit 1; }; \
	wait "$$writer_pid"
