# Chapter 04: passing the memfd over a Unix domain socket (SCM_RIGHTS).
PROGRAMS += 04-fd-passing/writer 04-fd-passing/reader
CHAPTERS += 04-fd-passing
