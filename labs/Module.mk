# The labs: what real systems add on top of the chapters. Each lab is labs/NAME/ with its notes
# (README.md), its programs and a test (tests/test_lab_NAME.cpp); `make lab-NAME` runs it.
PROGRAMS += labs/robust-mutex/dead_holder

LAB_ROBUST_MUTEX := $(BUILD)/labs/robust-mutex/dead_holder

.PHONY: lab-robust-mutex
lab-robust-mutex: $(LAB_ROBUST_MUTEX) ## lab: a process dies holding a process-shared mutex
	$(LAB_ROBUST_MUTEX) --mode plain --timeout 2
	$(LAB_ROBUST_MUTEX) --mode robust
	$(LAB_ROBUST_MUTEX) --mode no-repair

# labs/ring: a lock-free single-producer single-consumer ring in a /dev/shm object.
PROGRAMS += labs/ring/writer labs/ring/reader labs/ring/ring_bench
LAB_RING := $(BUILD)/labs/ring/writer $(BUILD)/labs/ring/reader $(BUILD)/labs/ring/ring_bench

.PHONY: lab-ring
lab-ring: $(LAB_RING) ## lab: a lock-free ring as Aeron builds it, 4 MiB of random bytes through it
	@labs/ring/run-lab $(BUILD)

# labs/limits: when the kernel says no, each limit hit in a namespace or under an rlimit.
PROGRAMS += labs/limits/limits
LAB_LIMITS := $(BUILD)/labs/limits/limits

.PHONY: lab-limits
lab-limits: $(LAB_LIMITS) $(BUILD)/01-sysv/writer $(BUILD)/02-posix-mmap/writer ## lab: System V limits, a full /dev/shm, RLIMIT_NOFILE, memory cgroups (77: a case needs root)
	$(LAB_LIMITS)

# labs/hugepages: page faults with 4 KiB pages, hugetlb pages and transparent huge pages.
PROGRAMS += labs/hugepages/faults
LAB_HUGEPAGES := $(BUILD)/labs/hugepages/faults

.PHONY: lab-hugepages
lab-hugepages: $(LAB_HUGEPAGES) ## lab: fault in 1 GiB with 4 KiB, SHM_HUGETLB, MFD_HUGETLB and THP pages (root reserves huge pages, restored after)
	$(LAB_HUGEPAGES) --size 1G --reserve

# labs/containers: which technique crosses which namespace (root: unshare).
.PHONY: lab-containers
lab-containers: $(filter $(BUILD)/01-sysv/% $(BUILD)/02-posix-mmap/% $(BUILD)/03-memfd/% $(BUILD)/04-fd-passing/%,$(BINARIES)) ## lab: chapters 01-04 with the reader in new IPC, mount, pid, network and user namespaces (root)
	@labs/containers/crossings $(BUILD)

# The containers test starts the script from the source tree.
$(BUILD)/tests/test_lab_containers.o: CPPFLAGS += -DSHMTUT_SOURCE_DIR='"$(abspath .)"'

# make bench (chapter 06) runs the ring's writer and reader as one of its pairs.
bench-programs: $(LAB_RING)
