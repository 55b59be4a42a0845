/* SPDX-License-Identifier: MIT */

#include <locale.h>
#include <math.h>

#include "common/jsonptr.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

/* RFC 6901 §5 */
static const char rfc_doc[] =
        "{\n"
        "  \"foo\": [\"bar\", \"baz\"],\n"
        "  \"\": 0,\n"
        "  \"a/b\": 1,\n"
        "  \"c%d\": 2,\n"
        "  \"e^f\": 3,\n"
        "  \"g|h\": 4,\n"
        "  \"i\\\\j\": 5,\n"
        "  \"k\\\"l\": 6,\n"
        "  \" \": 7,\n"
        "  \"m~n\": 8\n"
        "}";

static json_t *load(const char *s) {
        json_error_t err;
        json_t *j = json_loads(s, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);

        if (!j)
                fprintf(stderr, "  json: %s\n", err.text);
        CHECK(j);
        return j;
}

TEST(rfc6901_section5) {
        json_t *doc = load(rfc_doc), *v = NULL;
        static const struct { const char *ptr; int value; } ints[] = {
                { "/", 0 },
                { "/a~1b", 1 },
                { "/c%d", 2 },
                { "/e^f", 3 },
                { "/g|h", 4 },
                { "/i\\j", 5 },
                { "/k\"l", 6 },
                { "/ ", 7 },
                { "/m~0n", 8 },
        };

        if (!doc)
                return;

        /* "" -> the whole document */
        CHECK_EQ_INT(jsonptr_get(doc, "", &v), 0);
        CHECK(v == doc);

        /* "/foo" -> ["bar", "baz"] */
        CHECK_EQ_INT(jsonptr_get(doc, "/foo", &v), 0);
        CHECK(json_is_array(v) && json_array_size(v) == 2);
        CHECK(v == json_object_get(doc, "foo"));

        /* "/foo/0" -> "bar" */
        const char *s = NULL;
        CHECK_EQ_INT(jsonptr_get_string(doc, "/foo/0", &s), 0);
        CHECK_STREQ(s, "bar");
        CHECK_EQ_INT(jsonptr_get_string(doc, "/foo/1", &s), 0);
        CHECK_STREQ(s, "baz");

        for (size_t i = 0; i < ELEMENTSOF(ints); i++) {
                v = NULL;
                CHECK_EQ_INT(jsonptr_get(doc, ints[i].ptr, &v), 0);
                CHECK(json_is_integer(v));
                CHECK_EQ_INT(json_integer_value(v), ints[i].value);
                CHECK_EQ_INT(jsonptr_validate(ints[i].ptr), 0);
        }

        json_decref(doc);
}

TEST(rfc6901_section6_uri_fragment_decoded) {
        /* §6 lists the same pointers as URI fragments; once percent-decoded
         * they are the §5 strings. Spot-check the trickier ones. */
        json_t *doc = load(rfc_doc), *v = NULL;

        if (!doc)
                return;
        CHECK_EQ_INT(jsonptr_get(doc, "/c%d", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 2);
        CHECK_EQ_INT(jsonptr_get(doc, "/c%25d", &v), -ENOENT); /* no decoding */
        json_decref(doc);
}

TEST(escapes) {
        json_t *doc = load("{\"~1\": 1, \"/\": 2, \"~\": 3, \"~0\": 4, \"a/b~c\": {\"~/\": 5}}"), *v;

        if (!doc)
                return;
        /* "~01" is "~1", not "/" (unescape ~1 first would be wrong). */
        CHECK_EQ_INT(jsonptr_get(doc, "/~01", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 1);
        CHECK_EQ_INT(jsonptr_get(doc, "/~1", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 2);
        CHECK_EQ_INT(jsonptr_get(doc, "/~0", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 3);
        CHECK_EQ_INT(jsonptr_get(doc, "/~00", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 4);
        CHECK_EQ_INT(jsonptr_get(doc, "/a~1b~0c/~0~1", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 5);
        json_decref(doc);
}

TEST(nested_and_arrays) {
        json_t *doc = load("{\"a\": {\"b\": [10, [20, 21], {\"c\": true}]}, \"n\": null}"), *v;

        if (!doc)
                return;
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/0", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 10);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/1/1", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 21);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/2/c", &v), 0);
        CHECK(json_is_true(v));
        CHECK_EQ_INT(jsonptr_get(doc, "/n", &v), 0);
        CHECK(json_is_null(v));
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/1", NULL), 0);
        json_decref(doc);
}

TEST(not_found) {
        json_t *doc = load("{\"a\": {\"b\": [10, 11]}, \"s\": \"x\", \"01\": 1}"), *v = (json_t *) 0x1;

        if (!doc)
                return;
        CHECK_EQ_INT(jsonptr_get(doc, "/x", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/c", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/2", &v), -ENOENT);     /* past end */
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/-", &v), -ENOENT);     /* "-" never exists */
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/01", &v), -ENOENT);    /* leading zero */
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/00", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/+1", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/-1", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/1x", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/", &v), -ENOENT);      /* empty index */
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/ 1", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/18446744073709551617", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/99999999999999999999999999999", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/s/0", &v), -ENOENT);       /* into a scalar */
        CHECK_EQ_INT(jsonptr_get(doc, "/a/b/0/x", &v), -ENOENT);
        CHECK_EQ_INT(jsonptr_get(doc, "/a/", &v), -ENOENT);        /* key "" */
        CHECK(v == (json_t *) 0x1);
        /* ... but "01" is a fine object key */
        CHECK_EQ_INT(jsonptr_get(doc, "/01", &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 1);
        json_decref(doc);
}

TEST(bad_pointers) {
        static const char *const bad[] = {
                "a", "a/b", " /a", "#/a", "/~", "/~2", "/a~", "/~a", "/a/~/b", "/~~0", "/~1~",
        };
        json_t *doc = load("{\"a\": 1}"), *v = (json_t *) 0x1;

        if (!doc)
                return;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                CHECK_EQ_INT(jsonptr_validate(bad[i]), -EINVAL);
                CHECK_EQ_INT(jsonptr_get(doc, bad[i], &v), -EINVAL);
        }
        CHECK(v == (json_t *) 0x1);
        CHECK_EQ_INT(jsonptr_validate(NULL), -EINVAL);
        CHECK_EQ_INT(jsonptr_get(doc, NULL, &v), -EINVAL);
        CHECK_EQ_INT(jsonptr_get(NULL, "/a", &v), -EINVAL);
        json_decref(doc);
}

TEST(validate_good) {
        static const char *const good[] = {
                "", "/", "//", "/a", "/a/b/0", "/~0", "/~1", "/~01", "/a~0b~1c", "/ ", "/-", "/0/01",
                "/access_token", "/data/attributes/expires_in",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++)
                CHECK_EQ_INT(jsonptr_validate(good[i]), 0);
}

TEST(getn_embedded_nul) {
        json_t *doc = json_object(), *v = NULL;

        CHECK(doc);
        if (!doc)
                return;
        CHECK_EQ_INT(json_object_setn_new(doc, "a\0b", 3, json_integer(1)), 0);
        CHECK_EQ_INT(json_object_set_new(doc, "a", json_integer(2)), 0);
        CHECK_EQ_INT(jsonptr_getn(doc, "/a\0b", 4, &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 1);
        CHECK_EQ_INT(jsonptr_getn(doc, "/a\0bXXXX", 2, &v), 0);
        CHECK_EQ_INT(json_integer_value(v), 2);
        CHECK_EQ_INT(jsonptr_validaten("/a\0~", 4), -EINVAL);
        CHECK_EQ_INT(jsonptr_validaten("/~0", 2), -EINVAL);  /* "~" cut off */
        json_decref(doc);
}

TEST(get_string) {
        json_t *doc = load("{\"s\": \"v\", \"e\": \"\", \"n\": 1, \"o\": {}, \"z\": null}");
        const char *s = "untouched";

        if (!doc)
                return;
        CHECK_EQ_INT(jsonptr_get_string(doc, "/s", &s), 0);
        CHECK_STREQ(s, "v");
        CHECK_EQ_INT(jsonptr_get_string(doc, "/e", &s), 0);
        CHECK_STREQ(s, "");
        s = "untouched";
        CHECK_EQ_INT(jsonptr_get_string(doc, "/n", &s), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_string(doc, "/o", &s), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_string(doc, "/z", &s), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_string(doc, "/x", &s), -ENOENT);
        CHECK_EQ_INT(jsonptr_get_string(doc, "x", &s), -EINVAL);
        CHECK_STREQ(s, "untouched");
        CHECK_EQ_INT(json_object_set_new(doc, "nul", json_stringn("a\0b", 3)), 0);
        CHECK_EQ_INT(jsonptr_get_string(doc, "/nul", &s), -EMEDIUMTYPE);
        json_decref(doc);
}

TEST(get_number) {
        json_t *doc = load("{\"i\": 3600, \"r\": 3600.5, \"neg\": -5, \"big\": 9007199254740993,"
                           " \"b\": true, \"z\": null, \"o\": {}, \"a\": []}");
        double d;

        if (!doc)
                return;
        CHECK_EQ_INT(jsonptr_get_number(doc, "/i", &d), 0);
        CHECK(d == 3600.0);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/r", &d), 0);
        CHECK(d == 3600.5);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/neg", &d), 0);
        CHECK(d == -5.0);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/big", &d), 0);
        CHECK(d > 9.007e15);
        d = 42;
        CHECK_EQ_INT(jsonptr_get_number(doc, "/b", &d), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/z", &d), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/o", &d), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/a", &d), -EMEDIUMTYPE);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/x", &d), -ENOENT);
        CHECK_EQ_INT(jsonptr_get_number(doc, "~", &d), -EINVAL);
        CHECK(d == 42);
        json_decref(doc);
}

TEST(numbers_as_strings) {
        static const struct { const char *s; double v; } good[] = {
                { "3600", 3600 }, { " 3600 ", 3600 }, { "\t3600\r\n", 3600 },
                { "3600.0", 3600 }, { "3600.", 3600 }, { ".5", 0.5 }, { "+7", 7 },
                { "-1.5e3", -1500 }, { "1E2", 100 }, { "1e+2", 100 }, { "25e-1", 2.5 },
                { "007", 7 }, { "0", 0 }, { "-0", 0 }, { "0.000", 0 }, { "1e007", 1e7 },
                { "86400", 86400 }, { "31536000000", 31536000000.0 },
                { "123456789012345678901234567890", 1.2345678901234568e29 },
        };
        static const char *const bad[] = {
                "", " ", "\t\n", "abc", "3600s", "s3600", "36 00", "0x10", "0X1F", "1,5",
                "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "+", "-", ".", "-.", "+.e1",
                "e5", "1e", "1e+", "1e-", "1e5.5", "1..2", "--1", "+-1", "1-", "\"1\"",
                "1e999", "-1e999", "\xef\xbc\x91", /* fullwidth 1 */
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                json_t *doc = json_pack("{s:s}", "v", good[i].s);
                double d = NAN;

                CHECK(doc);
                CHECK_EQ_INT(jsonptr_get_number(doc, "/v", &d), 0);
                if (fabs(d - good[i].v) > fabs(good[i].v) * 1e-15) {
                        fprintf(stderr, "  \"%s\" -> %.17g\n", good[i].s, d);
                        CHECK(false);
                }
                json_decref(doc);
        }

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                json_t *doc = json_pack("{s:s}", "v", bad[i]);
                double d = 42;

                CHECK(doc);
                if (jsonptr_get_number(doc, "/v", &d) != -EINVAL) {
                        fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
                        CHECK(false);
                }
                CHECK(d == 42);
                json_decref(doc);
        }

        /* length bound (256 after trimming) */
        char buf[300];
        double d;
        memset(buf, '1', sizeof(buf));
        CHECK_EQ_INT(jsonptr_parse_number_string(buf, 256, &d), 0);
        CHECK_EQ_INT(jsonptr_parse_number_string(buf, 257, &d), -EINVAL);
        /* embedded NUL via json_stringn */
        json_t *doc = json_pack("{s:s#}", "v", "12\0" "3", (int) 4);
        CHECK(doc);
        CHECK_EQ_INT(jsonptr_get_number(doc, "/v", &d), -EINVAL);
        json_decref(doc);
}

TEST(number_string_locale_independent) {
        /* jansson converts with '.', whatever LC_NUMERIC says; we never
         * call strtod ourselves. Exercised with a ',' locale if one is
         * installed. */
        static const char *const locales[] = { "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "C" };
        double d;

        for (size_t i = 0; i < ELEMENTSOF(locales); i++)
                if (setlocale(LC_NUMERIC, locales[i]))
                        break;
        CHECK_EQ_INT(jsonptr_parse_number_string("2.25", 4, &d), 0);
        CHECK(d == 2.25);
        CHECK_EQ_INT(jsonptr_parse_number_string("2,25", 4, &d), -EINVAL);
        setlocale(LC_NUMERIC, "C");
        CHECK_EQ_INT(jsonptr_parse_number_string(NULL, 0, &d), -EINVAL);
        CHECK_EQ_INT(jsonptr_parse_number_string(NULL, 1, &d), -EINVAL);
}
