/* SPDX-License-Identifier: MIT */
#pragma once

/* JSON Pointer (RFC 6901) evaluation on jansson documents.
 *
 * Syntax: "" is the whole document; otherwise the pointer is a sequence of
 * "/token" where "~0" stands for '~' and "~1" for '/'; any other '~' is
 * malformed. Against an array, a token must be a decimal index without
 * leading zeros ("0", "17", not "01", "+1", "-"); anything else (including
 * "-", an index past the end, or one that overflows) does not resolve.
 *
 * Errors: -EINVAL  malformed pointer or NULL argument
 *         -ENOENT  valid pointer that does not resolve in this document
 *         -ENOMEM  allocation failure
 * Returned json_t pointers and strings are borrowed from root: valid while
 * root (and the node) is alive and unmodified; no reference is taken. */

#include <jansson.h>
#include <stddef.h>

/* 0 if ptr is a syntactically valid pointer, -EINVAL otherwise. */
int jsonptr_validate(const char *ptr);
/* Same on a (ptr, n) buffer: embedded NULs are allowed and are part of the
 * token (they can only match object keys containing NUL). */
int jsonptr_validaten(const char *ptr, size_t n);

/* ret may be NULL to test for existence. */
int jsonptr_get(json_t *root, const char *ptr, json_t **ret);
int jsonptr_getn(json_t *root, const char *ptr, size_t n, json_t **ret);

/* As jsonptr_get(), and the value must be a JSON string: -EMEDIUMTYPE if it
 * is of another type. The string is borrowed and NUL-terminated; strings
 * containing an embedded NUL (only possible with JSON_ALLOW_NUL) are rejected
 * with -EMEDIUMTYPE. */
int jsonptr_get_string(json_t *root, const char *ptr, const char **ret);

/* As jsonptr_get(), and the value must be a finite number: a JSON integer
 * or real, or a JSON string holding a decimal number, optionally surrounded
 * by ASCII whitespace: "3600", " 3600 ", "3600.0", "-1.5e3", "+7", "007"
 * (the grammar is [+-]? (D+ ('.' D*)? | '.' D+) ([eE] [+-]? D+)?, at most
 * 256 characters after trimming; parsing is locale-independent).
 * Errors beyond those of jsonptr_get():
 *   -EMEDIUMTYPE  value is neither a number nor a string (bool, null, ...)
 *   -EINVAL       string empty, not numeric ("abc", "0x10", "nan", "inf",
 *                 "1,5", "12abc"), or out of double range ("1e999") */
int jsonptr_get_number(json_t *root, const char *ptr, double *ret);

/* The string parser used by jsonptr_get_number(), exposed for reuse and
 * fuzzing: parses exactly n bytes of s. */
int jsonptr_parse_number_string(const char *s, size_t n, double *ret);
