# Chapter 01: System V shared memory and semaphores.
PROGRAMS += 01-sysv/writer 01-sysv/reader
CHAPTERS += 01-sysv
