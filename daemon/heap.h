/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

/* Readies malloc's heap for a bulk load of about `bytes` (the connections
 * at start): the heap is grown once by that much, and the new part is
 * marked for transparent huge pages, so the load takes a page fault per
 * 2 MiB instead of one per 4 KiB (on this class of VM a fault costs
 * microseconds; at a million connections the faults were a fifth of the
 * start). Best effort: it does nothing where malloc is not glibc's heap
 * (sanitizers) or huge pages are off, and a wrong estimate costs at most
 * untouched address space. Call heap_prepare_done() after the load. */
void heap_prepare(size_t bytes);
void heap_prepare_done(void);
