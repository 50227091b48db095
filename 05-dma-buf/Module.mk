# Chapter 05: dma-buf from a heap or from a memfd (udmabuf), passed as in chapter 04.
PROGRAMS += 05-dma-buf/writer 05-dma-buf/reader
CHAPTERS += 05-dma-buf
