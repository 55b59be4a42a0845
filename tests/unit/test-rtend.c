/* SPDX-License-Identifier: MIT */
/* daemon/rtend.c: the refresh-token end a token answer gives, and the two
 * heaps /metrics and the warning timer read (issue 12). */
#define TESTS_MAIN
#include "tests.h"

#include "daemon/connection.h"
#include "daemon/manager.h"
#include "daemon/rtend.h"

#define NOW ((usec_t) 1700000000 * USEC_PER_SEC)

TEST(compute_lifetime_from_the_grant) {
        /* a grant starts the absolute lifetime; refreshes keep it */
        CHECK(rtend_compute(0, true, 365 * USEC_PER_DAY, 0, NOW) == NOW + 365 * USEC_PER_DAY);
        CHECK(rtend_compute(NOW + 5, false, 365 * USEC_PER_DAY, 0, NOW + 100) == NOW + 5);
        /* an answer's end can only lower it */
        CHECK(rtend_compute(0, true, 365 * USEC_PER_DAY, NOW + USEC_PER_DAY, NOW) == NOW + USEC_PER_DAY);
        CHECK(rtend_compute(NOW + 10, false, USEC_PER_DAY, NOW + 20, NOW) == NOW + 10);
}

TEST(compute_answer_alone) {
        /* without a lifetime the answer's end replaces the old one (GitHub) */
        CHECK(rtend_compute(NOW + 10, false, 0, NOW + 20, NOW) == NOW + 20);
        CHECK(rtend_compute(NOW + 10, false, 0, 0, NOW) == NOW + 10);
        CHECK(rtend_compute(NOW + 10, true, 0, 0, NOW) == 0);   /* a new grant, nothing said: unknown */
}

TEST(heaps_and_unknown_count) {
        BrokerConfig cfg = { .refresh_token_warn = 10 * USEC_PER_SEC };
        Manager m = { .config = &cfg };
        Connection c[64] = {};
        char rt[] = "rt";

        for (size_t i = 0; i < 64; i++) {
                c[i].rt_idx[0] = c[i].rt_idx[1] = CONN_NO_IDX;
                c[i].refresh_token = rt;
                c[i].rt_end = i % 4 == 0 ? 0 : NOW + (usec_t) ((i * 37) % 64 + 1) * USEC_PER_SEC;
                rtend_update(&m, &c[i]);
        }
        CHECK(m.rt.n_unknown == 16);
        CHECK(m.rt.n[RT_HEAP_ALL] == 48);
        CHECK(m.rt.n[RT_HEAP_WARN] == 48);
        {
                usec_t min = USEC_INFINITY;
                for (size_t i = 0; i < 64; i++)
                        if (c[i].rt_end > 0 && c[i].rt_end < min)
                                min = c[i].rt_end;
                CHECK(rtend_earliest(&m) == min);
        }
        /* warned: out of the warning heap, still in the metric's */
        CHECK_EQ_INT(connection_set_rt_warned(&c[1], c[1].rt_end), 0);
        rtend_update(&m, &c[1]);
        CHECK(m.rt.n[RT_HEAP_WARN] == 47);
        CHECK(m.rt.n[RT_HEAP_ALL] == 48);
        /* a new end (re-authorization) warns again */
        c[1].rt_end += USEC_PER_SEC;
        rtend_update(&m, &c[1]);
        CHECK(m.rt.n[RT_HEAP_WARN] == 48);
        /* the refresh token dropped: out of both, not unknown either */
        c[0].refresh_token = NULL;
        rtend_update(&m, &c[0]);
        CHECK(m.rt.n_unknown == 15);
        c[2].refresh_token = NULL;
        rtend_update(&m, &c[2]);
        CHECK(m.rt.n[RT_HEAP_ALL] == 47);
        /* removal keeps the heap ordered: pop everything in order */
        for (size_t i = 0; i < 64; i++)
                rtend_remove(&m, &c[i]);
        CHECK(m.rt.n[RT_HEAP_ALL] == 0 && m.rt.n[RT_HEAP_WARN] == 0 && m.rt.n_unknown == 0);
        CHECK(rtend_earliest(&m) == 0);
        rtend_done(&m);
        CHECK_EQ_INT(connection_set_rt_warned(&c[1], 0), 0);   /* frees its ConnRare */
        CHECK(!c[1].rare);
}

TEST(heap_order_under_removal) {
        BrokerConfig cfg = { .refresh_token_warn = USEC_PER_SEC };
        Manager m = { .config = &cfg };
        Connection c[100] = {};
        char rt[] = "rt";
        usec_t last = 0;

        for (size_t i = 0; i < 100; i++) {
                c[i].rt_idx[0] = c[i].rt_idx[1] = CONN_NO_IDX;
                c[i].refresh_token = rt;
                c[i].rt_end = NOW + (usec_t) ((i * 7919) % 1000 + 1);
                rtend_update(&m, &c[i]);
        }
        for (size_t i = 0; i < 100; i++) {
                Connection *top = m.rt.h[RT_HEAP_ALL][0];
                CHECK(top->rt_end >= last);
                last = top->rt_end;
                rtend_remove(&m, top);
        }
        rtend_done(&m);
}
