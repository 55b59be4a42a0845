/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Readies malloc's heap for a bulk load of about `bytes` (the connections
 * at start): the heap is grown once by that much, and the new part is
 * marked for transparent huge pages, so the load takes a page fault per
 * 2 MiB instead of one per 4 KiB (on this class of VM a fault costs
 * microseconds; at a million connections the faults were a fifth of the
 * start). Best effort: it does nothing where malloc is not glibc's heap
 * (sanitizers) or huge pages are off, and a wrong estimate costs at most
 * untouched address space. Call heap_prepare_done() after the load. */
typedef struct HeapRegion {
        uintptr_t start, end;      /* the part of the heap made ready; start == end: none */
} HeapRegion;
/* *ret: the heap's new part, where the load's allocations go next (the
 * loader's linking thread faults it in just ahead of them). */
void heap_prepare(size_t bytes, HeapRegion *ret);
void heap_prepare_done(void);
