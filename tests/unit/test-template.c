/* SPDX-License-Identifier: MIT */

#include "common/macro.h"
#include "common/template.h"

#define TESTS_MAIN
#include "tests.h"

typedef struct Vars {
        unsigned calls;
} Vars;

static const char *lookup(const char *name, size_t len, void *userdata) {
        static const struct { const char *name, *value; } v[] = {
                { "access_token", "AT-123" },
                { "token_type", "Bearer" },
                { "empty", "" },
                { "dollar", "$" },
                { "brace", "${access_token}" },   /* values are not expanded again */
        };
        Vars *vars = userdata;

        if (vars)
                vars->calls++;
        for (size_t i = 0; i < ELEMENTSOF(v); i++)
                if (strlen(v[i].name) == len && memcmp(v[i].name, name, len) == 0)
                        return v[i].value;
        return NULL;
}

static const char *const known[] = { "access_token", "token_type", NULL };

TEST(expand_table) {
        static const struct { const char *tmpl, *out; } v[] = {
                { "", "" },
                { "plain text", "plain text" },
                { "${access_token}", "AT-123" },
                { "Authorization: ${token_type} ${access_token}", "Authorization: Bearer AT-123" },
                { "${token_type}${access_token}", "BearerAT-123" },
                { "a${empty}b", "ab" },
                { "$$", "$" },
                { "$$$$", "$$" },
                { "cost: $$5", "cost: $5" },
                { "$${access_token}", "${access_token}" },        /* escaped, not a placeholder */
                { "$$${access_token}", "$AT-123" },
                { "${dollar}${dollar}", "$$" },
                { "${brace}", "${access_token}" },
                { "a$b", "a$b" },                                  /* lone '$' is literal */
                { "end$", "end$" },
                { "x}y", "x}y" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *out = NULL;
                const char *bad = NULL;
                size_t bad_len = 0;
                int r = template_expand(v[i].tmpl, lookup, NULL, &out, &bad, &bad_len);

                if (r != 0)
                        fprintf(stderr, "  template \"%s\" -> %d\n", v[i].tmpl, r);
                CHECK_EQ_INT(r, 0);
                CHECK_STREQ(out, v[i].out);
                CHECK(!bad);
        }
}

TEST(expand_passes_userdata) {
        _cleanup_free_ char *out = NULL;
        Vars vars = {};

        CHECK_EQ_INT(template_expand("${access_token}:${token_type}:${access_token}", lookup, &vars, &out,
                                     NULL, NULL), 0);
        CHECK_STREQ(out, "AT-123:Bearer:AT-123");
        CHECK_EQ_INT(vars.calls, 3);
}

TEST(expand_unknown_names_it) {
        static const char tmpl[] = "Authorization: ${token_type} ${nope} ${access_token}";
        char *out = (char *) "untouched";
        const char *bad = NULL;
        size_t bad_len = 0;

        CHECK_EQ_INT(template_expand(tmpl, lookup, NULL, &out, &bad, &bad_len), -ENOKEY);
        CHECK_STREQ(out, "untouched");
        CHECK(bad >= tmpl && bad < tmpl + sizeof tmpl);
        CHECK_EQ_INT(bad_len, 4);
        CHECK(bad && strncmp(bad, "nope", bad_len) == 0);
}

TEST(expand_empty_name_unknown) {
        char *out = NULL;
        const char *bad = NULL;
        size_t bad_len = 99;

        CHECK_EQ_INT(template_expand("a${}b", lookup, NULL, &out, &bad, &bad_len), -ENOKEY);
        CHECK(!out);
        CHECK(bad);
        CHECK_EQ_INT(bad_len, 0);
}

TEST(expand_unclosed) {
        static const char tmpl[] = "Bearer ${access_token";
        char *out = NULL;
        const char *bad = NULL;
        size_t bad_len = 0;

        CHECK_EQ_INT(template_expand(tmpl, lookup, NULL, &out, &bad, &bad_len), -EINVAL);
        CHECK(!out);
        /* the bad text starts at the "${" and runs to the end */
        CHECK(bad == tmpl + 7);
        CHECK_EQ_INT(bad_len, strlen("${access_token"));

        CHECK_EQ_INT(template_expand("${", lookup, NULL, &out, NULL, NULL), -EINVAL);
        CHECK_EQ_INT(template_expand("ok ${access_token} ${", lookup, NULL, &out, NULL, NULL), -EINVAL);
        CHECK(!out);
}

TEST(expand_null_bad_pointers_ok) {
        char *out = NULL;

        /* ret_bad may be NULL when the caller does not care */
        CHECK_EQ_INT(template_expand("${nope}", lookup, NULL, &out, NULL, NULL), -ENOKEY);
        CHECK(!out);
}

TEST(expand_long) {
        char tmpl[4096];
        _cleanup_free_ char *out = NULL;
        size_t o = 0;

        /* many placeholders: the output buffer has to grow many times */
        for (int i = 0; i < 200; i++) {
                memcpy(tmpl + o, "${access_token}-", 16);
                o += 16;
        }
        tmpl[o] = 0;
        CHECK_EQ_INT(template_expand(tmpl, lookup, NULL, &out, NULL, NULL), 0);
        CHECK_EQ_INT(strlen(out), 200 * strlen("AT-123-"));
        CHECK(strncmp(out, "AT-123-AT-123-", 14) == 0);
}

TEST(validate_known) {
        static const char *const ok[] = {
                "",
                "Authorization: Bearer ${access_token}",
                "Authorization: ${token_type} ${access_token}",
                "X-Price: $$5",
                "$${nope}",
                "a$b",
        };

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                const char *bad = NULL;
                size_t bad_len = 0;
                int r = template_validate(ok[i], known, &bad, &bad_len);
                if (r != 0)
                        fprintf(stderr, "  validate \"%s\" -> %d\n", ok[i], r);
                CHECK_EQ_INT(r, 0);
                CHECK(!bad);
        }
}

TEST(validate_unknown) {
        static const struct { const char *tmpl, *bad; } v[] = {
                { "${nope}", "nope" },
                { "Authorization: Bearer ${access_token} ${refresh_token}", "refresh_token" },
                { "${access_tokenx}", "access_tokenx" },    /* no prefix matching */
                { "${access_toke}", "access_toke" },
                { "${ACCESS_TOKEN}", "ACCESS_TOKEN" },      /* case matters */
                { "${}", "" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                const char *bad = NULL;
                size_t bad_len = 0;

                CHECK_EQ_INT(template_validate(v[i].tmpl, known, &bad, &bad_len), -ENOKEY);
                CHECK(bad);
                CHECK_EQ_INT(bad_len, strlen(v[i].bad));
                CHECK(bad && strncmp(bad, v[i].bad, bad_len) == 0);
        }
}

TEST(validate_unclosed) {
        static const char tmpl[] = "Authorization: ${access_token} ${token_type";
        const char *bad = NULL;
        size_t bad_len = 0;

        CHECK_EQ_INT(template_validate(tmpl, known, &bad, &bad_len), -EINVAL);
        CHECK(bad == strstr(tmpl, "${token_type"));
        CHECK_EQ_INT(bad_len, strlen("${token_type"));
}

TEST(validate_empty_known_list) {
        static const char *const none[] = { NULL };
        const char *bad = NULL;
        size_t bad_len = 0;

        CHECK_EQ_INT(template_validate("no placeholders $$", none, &bad, &bad_len), 0);
        CHECK_EQ_INT(template_validate("${access_token}", none, &bad, &bad_len), -ENOKEY);
        CHECK_EQ_INT(bad_len, 12);
}
