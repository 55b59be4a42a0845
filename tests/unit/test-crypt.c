/* SPDX-License-Identifier: MIT */

/* Unit tests for daemon/crypt.c: AES-256-GCM sealing and key loading. Key
 * files live in a mkdtemp() folder per test. */

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/macro.h"
#include "daemon/crypt.h"

#define TESTS_MAIN
#include "tests.h"

/* ---- helpers ---------------------------------------------------------- */

static char *tmpdir_new(void) {
        const char *base = getenv("TMPDIR");
        char *d = NULL;

        if (asprintf(&d, "%s/tb-test-crypt-XXXXXX", isempty(base) ? "/tmp" : base) < 0)
                return NULL;
        if (!mkdtemp(d))
                return mfree(d);
        return d;
}

static int rm_one(const char *path, const struct stat *st _unused_, int flag, struct FTW *ftw _unused_) {
        return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void tmpdir_free(char **d) {
        if (*d) {
                (void) nftw(*d, rm_one, 16, FTW_DEPTH | FTW_PHYS);
                *d = mfree(*d);
        }
}
#define _cleanup_tmpdir_ _cleanup_(tmpdir_free)

static char *path_in(const char *dir, const char *name) {
        char *p = NULL;

        return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static int write_file(const char *path, const void *p, size_t n, mode_t mode) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

        if (fd < 0)
                return -errno;
        if (fchmod(fd, mode) < 0)   /* past the umask */
                return -errno;
        return write(fd, p, n) == (ssize_t) n ? 0 : -EIO;
}

static CryptKey key_a = { .bytes = "0123456789abcdef0123456789abcdef" };
static CryptKey key_b = { .bytes = "0123456789abcdef0123456789abcdeF" };   /* one bit apart */

#define AAD(s) (s), strlen(s)

/* ---- sealing ---------------------------------------------------------- */

TEST(round_trip) {
        static const char *const texts[] = { "", "x", "ya29.a0AfH6SMC-token", "at-0123456789abcdef0123456789abcdef" };

        for (size_t i = 0; i < ELEMENTSOF(texts); i++) {
                _cleanup_free_ uint8_t *sealed = NULL;
                _cleanup_free_ char *opened = NULL;
                size_t n = 0, m = 99;

                CHECK_EQ_INT(crypt_seal(&key_a, AAD("connections.access_token:1"), texts[i], strlen(texts[i]),
                                        &sealed, &n),
                             0);
                CHECK_EQ_INT(n, CRYPT_OVERHEAD + strlen(texts[i]));
                if (!sealed)
                        continue;
                CHECK_EQ_INT(sealed[0], CRYPT_VERSION);
                /* no plaintext in the sealed bytes */
                if (strlen(texts[i]) > 1)
                        CHECK(!memmem(sealed, n, texts[i], strlen(texts[i])));
                CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.access_token:1"), sealed, n, &opened, &m), 0);
                CHECK_STREQ(opened, texts[i]);
                CHECK_EQ_INT(m, strlen(texts[i]));
        }
}

TEST(binary_round_trip) {
        uint8_t p[300];
        _cleanup_free_ uint8_t *sealed = NULL;
        _cleanup_free_ char *opened = NULL;
        size_t n = 0, m = 0;

        for (size_t i = 0; i < sizeof p; i++)
                p[i] = (uint8_t) i;
        CHECK_EQ_INT(crypt_seal(&key_a, NULL, 0, p, sizeof p, &sealed, &n), 0);
        CHECK_EQ_INT(crypt_open(&key_a, NULL, 0, sealed, n, &opened, &m), 0);
        CHECK_EQ_INT(m, sizeof p);
        CHECK(opened && memcmp(opened, p, sizeof p) == 0 && opened[m] == 0);
}

TEST(fresh_nonce_each_time) {
        _cleanup_free_ uint8_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("x"), "same value", 10, &a, &na), 0);
        CHECK_EQ_INT(crypt_seal(&key_a, AAD("x"), "same value", 10, &b, &nb), 0);
        CHECK_EQ_INT(na, nb);
        if (!a || !b)
                return;
        CHECK(memcmp(a + 1, b + 1, CRYPT_NONCE_SIZE) != 0);     /* the nonces */
        CHECK(memcmp(a, b, na) != 0);                           /* and so everything */
}

/* Nonces come from a per-thread pool: never the same twice, also across
 * refills (4 KiB is 341 nonces), and a forked child does not hand out the
 * parent's next ones. */
TEST(nonces_unique_across_pool_refills_and_fork) {
        static uint8_t seen[1000][CRYPT_NONCE_SIZE];
        uint8_t child[CRYPT_NONCE_SIZE] = {};
        int fds[2];
        pid_t pid;

        for (size_t i = 0; i < ELEMENTSOF(seen); i++) {
                _cleanup_free_ uint8_t *s = NULL;
                size_t n = 0;

                CHECK_EQ_INT(crypt_seal(&key_a, AAD("x"), "v", 1, &s, &n), 0);
                if (!s)
                        return;
                memcpy(seen[i], s + 1, CRYPT_NONCE_SIZE);
                for (size_t j = 0; j < i; j++)
                        if (memcmp(seen[i], seen[j], CRYPT_NONCE_SIZE) == 0) {
                                CHECK(!"nonce repeated");
                                return;
                        }
        }

        CHECK_EQ_INT(pipe(fds), 0);
        pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
                _cleanup_free_ uint8_t *s = NULL;
                size_t n = 0;

                if (crypt_seal(&key_a, AAD("x"), "v", 1, &s, &n) == 0)
                        (void) !write(fds[1], s + 1, CRYPT_NONCE_SIZE);
                _exit(0);
        }
        close(fds[1]);
        CHECK_EQ_INT(read(fds[0], child, sizeof child), (int) sizeof child);
        close(fds[0]);
        (void) waitpid(pid, NULL, 0);
        {
                _cleanup_free_ uint8_t *s = NULL;
                size_t n = 0;

                CHECK_EQ_INT(crypt_seal(&key_a, AAD("x"), "v", 1, &s, &n), 0);
                CHECK(s && memcmp(s + 1, child, CRYPT_NONCE_SIZE) != 0);
        }
}

TEST(wrong_aad_fails) {
        _cleanup_free_ uint8_t *sealed = NULL;
        char *opened = NULL;
        size_t n = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("connections.access_token:12"), "tok", 3, &sealed, &n), 0);
        /* another row, another column, a prefix, nothing */
        CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.access_token:13"), sealed, n, &opened, NULL), -EBADMSG);
        CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.access_token:1"), sealed, n, &opened, NULL), -EBADMSG);
        CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.refresh_token:12"), sealed, n, &opened, NULL), -EBADMSG);
        CHECK_EQ_INT(crypt_open(&key_a, NULL, 0, sealed, n, &opened, NULL), -EBADMSG);
        CHECK(!opened);
        CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.access_token:12"), sealed, n, &opened, NULL), 0);
        CHECK_STREQ(opened, "tok");
        free(opened);
}

TEST(wrong_key_fails) {
        _cleanup_free_ uint8_t *sealed = NULL;
        char *opened = NULL;
        size_t n = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("aad"), "secret", 6, &sealed, &n), 0);
        CHECK_EQ_INT(crypt_open(&key_b, AAD("aad"), sealed, n, &opened, NULL), -EBADMSG);
        CHECK(!opened);
}

TEST(every_bit_flip_fails) {
        _cleanup_free_ uint8_t *sealed = NULL;
        const char *text = "rt-refresh-token-value";
        size_t n = 0, bad = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("connections.refresh_token:5"), text, strlen(text), &sealed, &n), 0);
        if (!sealed)
                return;
        for (size_t bit = 0; bit < n * 8; bit++) {
                char *opened = NULL;
                int r;

                sealed[bit / 8] ^= (uint8_t) (1u << (bit % 8));
                r = crypt_open(&key_a, AAD("connections.refresh_token:5"), sealed, n, &opened, NULL);
                sealed[bit / 8] ^= (uint8_t) (1u << (bit % 8));
                /* the version byte is refused as unknown, the rest by the tag */
                if (r != (bit < 8 ? -EPROTONOSUPPORT : -EBADMSG) || opened)
                        bad++;
                free(opened);
        }
        CHECK_EQ_INT(bad, 0);
        /* and unflipped it still opens */
        {
                _cleanup_free_ char *opened = NULL;
                CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.refresh_token:5"), sealed, n, &opened, NULL), 0);
                CHECK_STREQ(opened, text);
        }
}

TEST(truncated_or_extended_fails) {
        _cleanup_free_ uint8_t *sealed = NULL, *longer = NULL;
        size_t n = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("a"), "abcdef", 6, &sealed, &n), 0);
        if (!sealed)
                return;
        for (size_t k = 0; k < n; k++) {
                char *opened = NULL;

                CHECK(crypt_open(&key_a, AAD("a"), sealed, k, &opened, NULL) < 0);
                CHECK(!opened);
        }
        longer = malloc(n + 1);
        if (!longer)
                return;
        memcpy(longer, sealed, n);
        longer[n] = 0;
        {
                char *opened = NULL;
                CHECK_EQ_INT(crypt_open(&key_a, AAD("a"), longer, n + 1, &opened, NULL), -EBADMSG);
                CHECK(!opened);
        }
        /* a plain value from before encryption is no sealed value */
        {
                char *opened = NULL;
                CHECK(crypt_open(&key_a, AAD("a"), "ya29.plain-old-token-of-some-length", 35, &opened, NULL) < 0);
                CHECK(!opened);
        }
}

TEST(too_large_refused) {
        uint8_t *sealed = NULL;
        size_t n = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, NULL, 0, "", (size_t) CRYPT_PLAINTEXT_MAX + 1, &sealed, &n), -EFBIG);
        CHECK(!sealed);
}

/* The format, independently of this code: sealed by node's crypto
 * (createCipheriv("aes-256-gcm"), setAAD(0x01 || aad)) with key_a and the
 * nonce 00 01 .. 0b. */
TEST(known_answer) {
        static const uint8_t sealed[] = {
                0x01, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
                0x45, 0x80, 0xd7, 0x10, 0xb6, 0x34, 0xf2, 0xd8, 0xc7, 0xb7, 0x14, 0xd0,
                0x2d, 0x7f, 0x08, 0x8f, 0x07, 0xff, 0xf4, 0x6f, 0x8b, 0x72, 0x32, 0x14,
                0xae, 0x83, 0x9d, 0x67,
        };
        _cleanup_free_ char *opened = NULL;
        size_t m = 0;

        CHECK_EQ_INT(sizeof sealed, CRYPT_OVERHEAD + strlen("hello, token"));
        CHECK_EQ_INT(crypt_open(&key_a, AAD("connections.access_token:1"), sealed, sizeof sealed, &opened, &m), 0);
        CHECK_STREQ(opened, "hello, token");
        CHECK_EQ_INT(m, strlen("hello, token"));
}

/* ---- keys ------------------------------------------------------------- */

TEST(key_new_and_free) {
        _cleanup_(crypt_key_freep) CryptKey *k = NULL, *d = NULL;

        CHECK_EQ_INT(crypt_key_new("short", 5, &k), -EBADMSG);
        CHECK(!k);
        CHECK_EQ_INT(crypt_key_new(key_a.bytes, CRYPT_KEY_SIZE, &k), 0);
        CHECK_EQ_INT(crypt_key_dup(k, &d), 0);
        CHECK(k && d && memcmp(d->bytes, key_a.bytes, CRYPT_KEY_SIZE) == 0);
        CHECK(!crypt_key_free(NULL));
}

TEST(key_file_created) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = path_in(dir, "tokenbroker.key");
        _cleanup_(crypt_key_freep) CryptKey *k = NULL, *again = NULL;
        bool created = false;
        struct stat st;
        mode_t old;

        CHECK(dir && path);
        /* a loose umask must not loosen the key */
        old = umask(0);
        CHECK_EQ_INT(crypt_key_load(path, true, &k, &created), 0);
        umask(old);
        CHECK(k);
        CHECK(created);
        CHECK_EQ_INT(stat(path, &st), 0);
        CHECK(S_ISREG(st.st_mode));
        CHECK_EQ_INT(st.st_mode & 07777, 0600);
        CHECK_EQ_INT(st.st_size, CRYPT_KEY_SIZE);
        CHECK_EQ_INT(st.st_uid, geteuid());

        /* the same key next time, not created again */
        CHECK_EQ_INT(crypt_key_load(path, true, &again, &created), 0);
        CHECK(!created);
        CHECK(k && again && memcmp(k->bytes, again->bytes, CRYPT_KEY_SIZE) == 0);

        /* no temporary file left behind: the folder holds the key alone */
        {
                DIR *d = opendir(dir);
                struct dirent *de;
                unsigned n = 0;

                CHECK(d);
                while (d && (de = readdir(d)))
                        if (de->d_name[0] != '.' || de->d_name[1] == '#')
                                n++;
                if (d)
                        closedir(d);
                CHECK_EQ_INT(n, 1);
        }
}

TEST(key_files_differ) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *a = path_in(dir, "a.key"), *b = path_in(dir, "b.key");
        _cleanup_(crypt_key_freep) CryptKey *ka = NULL, *kb = NULL;

        CHECK_EQ_INT(crypt_key_load(a, true, &ka, NULL), 0);
        CHECK_EQ_INT(crypt_key_load(b, true, &kb, NULL), 0);
        CHECK(ka && kb && memcmp(ka->bytes, kb->bytes, CRYPT_KEY_SIZE) != 0);
}

TEST(key_file_missing_without_create) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = path_in(dir, "none.key"), *deep = path_in(dir, "no/such/dir/k");
        CryptKey *k = NULL;

        CHECK_EQ_INT(crypt_key_load(path, false, &k, NULL), -ENOENT);
        CHECK(!k);
        CHECK_EQ_INT(access(path, F_OK), -1);
        /* creating needs the folder */
        CHECK_EQ_INT(crypt_key_load(deep, true, &k, NULL), -ENOENT);
        CHECK(!k);
}

TEST(key_file_loose_mode_refused) {
        static const mode_t modes[] = { 0644, 0640, 0604, 0660, 0601, 0610, 0700 | 0004 };
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = path_in(dir, "k");

        for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
                CryptKey *k = NULL;

                CHECK_EQ_INT(write_file(path, key_a.bytes, CRYPT_KEY_SIZE, modes[i]), 0);
                CHECK_EQ_INT(crypt_key_load(path, true, &k, NULL), -EPERM);
                CHECK(!k);
        }
        /* 0400 and 0600 are fine */
        {
                _cleanup_(crypt_key_freep) CryptKey *k = NULL;

                CHECK_EQ_INT(chmod(path, 0400), 0);
                CHECK_EQ_INT(crypt_key_load(path, true, &k, NULL), 0);
                CHECK(k && memcmp(k->bytes, key_a.bytes, CRYPT_KEY_SIZE) == 0);
        }
}

TEST(key_file_wrong_size_refused) {
        static const size_t sizes[] = { 0, 1, 16, 31, 33, 44, 64 };
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = path_in(dir, "k");
        uint8_t buf[64] = {};

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                CryptKey *k = NULL;
                bool created = true;

                CHECK_EQ_INT(write_file(path, buf, sizes[i], 0600), 0);
                CHECK_EQ_INT(crypt_key_load(path, true, &k, &created), -EBADMSG);
                CHECK(!k);
        }
        /* never replaced by a fresh key */
        {
                struct stat st;
                CHECK_EQ_INT(stat(path, &st), 0);
                CHECK_EQ_INT(st.st_size, 64);
        }
}

TEST(key_not_a_file_refused) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = path_in(dir, "k");
        CryptKey *k = NULL;

        CHECK_EQ_INT(mkdir(path, 0700), 0);
        CHECK_EQ_INT(crypt_key_load(path, true, &k, NULL), -EBADF);
        CHECK(!k);
}

TEST(credential_preferred_over_key_file) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *creds = path_in(dir, "creds"), *cred = NULL, *file = path_in(dir, "file.key");
        _cleanup_free_ char *found = NULL;
        _cleanup_(crypt_key_freep) CryptKey *k = NULL;
        bool credential = false;
        const char *saved = getenv("CREDENTIALS_DIRECTORY");
        _cleanup_free_ char *saved_copy = saved ? strdup(saved) : NULL;

        CHECK_EQ_INT(mkdir(creds, 0700), 0);
        cred = path_in(creds, CRYPT_KEY_NAME);
        CHECK_EQ_INT(write_file(file, key_a.bytes, CRYPT_KEY_SIZE, 0600), 0);

        /* no $CREDENTIALS_DIRECTORY: the key file */
        CHECK_EQ_INT(unsetenv("CREDENTIALS_DIRECTORY"), 0);
        CHECK_EQ_INT(crypt_key_find(CRYPT_KEY_NAME, file, &found, &credential), 0);
        CHECK_STREQ(found, file);
        CHECK(!credential);
        found = mfree(found);

        /* set, but without this credential (a unit passing other ones): the key file */
        CHECK_EQ_INT(setenv("CREDENTIALS_DIRECTORY", creds, 1), 0);
        CHECK_EQ_INT(crypt_key_find(CRYPT_KEY_NAME, file, &found, &credential), 0);
        CHECK_STREQ(found, file);
        CHECK(!credential);
        found = mfree(found);

        /* set, with it: the credential, whatever the file holds */
        CHECK_EQ_INT(write_file(cred, key_b.bytes, CRYPT_KEY_SIZE, 0400), 0);
        CHECK_EQ_INT(crypt_key_find(CRYPT_KEY_NAME, file, &found, &credential), 0);
        CHECK_STREQ(found, cred);
        CHECK(credential);
        CHECK_EQ_INT(crypt_key_load(found, !credential, &k, NULL), 0);
        CHECK(k && memcmp(k->bytes, key_b.bytes, CRYPT_KEY_SIZE) == 0);
        found = mfree(found);

        /* a credential is never created: missing means the file */
        CHECK_EQ_INT(crypt_key_find("other.key", file, &found, &credential), 0);
        CHECK_STREQ(found, file);
        found = mfree(found);

        if (saved_copy)
                (void) setenv("CREDENTIALS_DIRECTORY", saved_copy, 1);
        else
                (void) unsetenv("CREDENTIALS_DIRECTORY");
}

TEST(open_into_a_buffer) {
        _cleanup_free_ uint8_t *sealed = NULL;
        char out[64];
        size_t n = 0;

        CHECK_EQ_INT(crypt_seal(&key_a, AAD("connections.refresh_token:7"), "rt-0123456789", 13, &sealed, &n), 0);
        if (!sealed)
                return;
        /* exactly the value and its NUL, or -ENOBUFS without writing */
        memset(out, 'X', sizeof out);
        CHECK_EQ_INT(crypt_open_into(&key_a, AAD("connections.refresh_token:7"), sealed, n, out, 13), -ENOBUFS);
        CHECK(out[0] == 'X');
        CHECK_EQ_INT(crypt_open_into(&key_a, AAD("connections.refresh_token:7"), sealed, n, out, 14), 13);
        CHECK_STREQ(out, "rt-0123456789");
        CHECK(out[14] == 'X');
        /* bound to its aad like crypt_open(); the buffer is wiped */
        CHECK_EQ_INT(crypt_open_into(&key_a, AAD("connections.refresh_token:8"), sealed, n, out, sizeof out),
                     -EBADMSG);
        CHECK(out[0] == 0 && out[12] == 0);
        sealed[0] ^= 0x80;
        CHECK_EQ_INT(crypt_open_into(&key_a, AAD("connections.refresh_token:7"), sealed, n, out, sizeof out),
                     -EPROTONOSUPPORT);
}
