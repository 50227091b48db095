# The workshop kit: the pre-flight check, the demo panes, a shell in chapter 05's VM, and the
# exercises that check themselves (exercises/README.md). The top-level Makefile includes this file.

.PHONY: preflight vm-05-prepare vm-shell

preflight: ## is this machine ready for the workshop? a table of chapters; the last line says "ready"
	@scripts/preflight

VM_PACKAGES := linux-source-6.1 qemu-system-x86 bc bison flex libelf-dev busybox-static xz-utils gcc g++ make

vm-05-prepare: ## install QEMU and build chapter 05's VM kernel once (minutes), so that vm-05 and vm-shell only boot
	@scripts/ensure-packages "chapter 05's virtual machine needs a kernel source, QEMU and busybox" $(VM_PACKAGES)
	@05-dma-buf/vm/build-kernel >/dev/null

# make demo-01 ... demo-06: the chapter's pair and the kernel's view in one tmux window. (Not
# .PHONY: make skips pattern rules for phony targets; no file is named demo-NN.)
demo-01: ## (and demo-00 to demo-06) chapter NN's writer, reader and what the kernel shows, side by side in tmux
demo-%: all
	@scripts/ensure-packages "make demo-$* shows the pair in tmux panes" tmux || true
	@scripts/demo $*

vm-shell: ## boot chapter 05's VM to a shell: run the pairs there and look inside (exit powers it off)
	+@05-dma-buf/vm/shell

# The exercises (exercises/README.md): make exercise-03 builds the learner's files of chapter 03
# and runs the chapter's tests against them; make exercises lists every exercise, done or not.
.PHONY: exercises
exercises: ## list every exercise (exercises/NN-name/) as done or not: make exercise-NN runs one chapter's, with a hint
	@scripts/ensure-packages "the exercises run the chapters' Catch2 tests" catch2
	+@scripts/exercise --list

exercise-01: ## (and exercise-02 to exercise-06) build chapter NN's exercises and run its tests on them
exercise-%:
	@scripts/ensure-packages "the exercises run the chapters' Catch2 tests" catch2
	+@scripts/exercise $*
