# Chapter 02: POSIX shared memory (shm_open + mmap) with semaphores inside the mapping.
PROGRAMS += 02-posix-mmap/writer 02-posix-mmap/reader
CHAPTERS += 02-posix-mmap
