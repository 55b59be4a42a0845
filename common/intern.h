/* SPDX-License-Identifier: MIT */
#pragma once

/* Interned strings: one reference-counted copy of each distinct value.
 *
 * A million connections of one provider hold the same provider name, token
 * type and scope: interned, each is one pointer a connection instead of a
 * malloc'ed copy (a 32-byte chunk at least, with its header), and loading
 * a row costs a hash lookup instead of an allocation.
 *
 * An interned string is read-only and stays alive while it has references;
 * hand each reference back with intern_unref() exactly once. Passing a
 * pointer that intern() did not return to intern_unref() or intern_ref()
 * is a bug (caught by an assertion).
 *
 * One table per process, not thread-safe: the event loop's thread only
 * (the store writer thread works on copies). */

#include <stddef.h>

/* A reference to the interned copy of s (made on first use). NULL if s is
 * NULL, or on -ENOMEM (check s to tell them apart). */
const char *intern(const char *s);
/* The same for the n bytes at s (need not be NUL-terminated; an embedded
 * NUL ends the string). */
const char *intern_n(const char *s, size_t n);
/* Another reference to an interned string; NULL passes through. */
const char *intern_ref(const char *s);
/* Gives back one reference; the last frees the copy. NULL is a no-op.
 * Returns NULL. */
const char *intern_unref(const char *s);

/* Distinct strings interned now, and the bytes they take (headers
 * included, malloc's own overhead not). For tests and measurements. */
size_t intern_count(void);
size_t intern_bytes(void);
