/* SPDX-License-Identifier: MIT */

/* The store matrix (issue 10): tests/unit/test-store.c again, on
 * PostgreSQL. Every test of the store's behaviour there (round trips,
 * saves of every field, id order, deletes, unique names and states, a
 * failed insert, a fresh nonce per save, a wrong key refused before any
 * row, rekey, the writer's order and its failures) opens a fresh database
 * on the cluster of TB_PG_URI instead of a fresh SQLite file; what only
 * SQLite has stays in the SQLite build. Run by
 * tests/integration/store-pg.test.js on a throwaway cluster. */

#define TB_STORE_PG 1
#include "../unit/test-store.c"
