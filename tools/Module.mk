# Tools for every chapter's "look inside" section.
#   build/tools/pfn PID ADDRESS...   the physical frame behind an address of a running process
PROGRAMS += tools/pfn
