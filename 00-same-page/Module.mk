# Chapter 00: one physical page in two processes (mmap MAP_SHARED|MAP_ANONYMOUS, fork, pagemap).
# It is included first, so that `make run` starts with it.
PROGRAMS += 00-same-page/hello 00-same-page/same_page
CHAPTERS += 00-same-page

.PHONY: run-00 hello-00
run-00: $(BUILD)/00-same-page/same_page ## run chapter 00: one page, two processes, and the frame behind it
	@scripts/run-demos $(BUILD) 00-same-page

hello-00: $(BUILD)/00-same-page/hello ## run chapter 00's bare calls: mmap, fork, write, waitpid, read
	$(BUILD)/00-same-page/hello
