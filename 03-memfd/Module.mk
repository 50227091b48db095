# Chapter 03: memfd_create, file seals and a raw futex.
PROGRAMS += 03-memfd/writer 03-memfd/reader 03-memfd/atomic_wait_experiment
CHAPTERS += 03-memfd
