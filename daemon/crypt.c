/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>

#include "common/util.h"
#include "daemon/crypt.h"

CryptKey *crypt_key_free(CryptKey *k) {
        if (!k)
                return NULL;
        /* Freeing a context cleanses its key schedule. */
        EVP_CIPHER_CTX_free(k->seal_ctx);
        EVP_CIPHER_CTX_free(k->open_ctx);
        explicit_wipe(k, sizeof *k);
        free(k);
        return NULL;
}

int crypt_key_new(const void *bytes, size_t n, CryptKey **ret) {
        CryptKey *k;

        if (n != CRYPT_KEY_SIZE)
                return -EBADMSG;
        k = new0(CryptKey, 1);
        if (!k)
                return -ENOMEM;
        memcpy(k->bytes, bytes, CRYPT_KEY_SIZE);
        *ret = k;
        return 0;
}

int crypt_key_dup(const CryptKey *k, CryptKey **ret) {
        return crypt_key_new(k->bytes, sizeof k->bytes, ret);
}

/* ---- where the key lives ------------------------------------------- */

int crypt_key_find(const char *credential, const char *key_file, char **ret_path, bool *ret_credential) {
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        char *p;

        /* A unit that passes the key as a credential wins over any file:
         * the file is only the fallback for a broker run by hand. */
        if (!isempty(dir) && !isempty(credential)) {
                if (asprintf(&p, "%s/%s", dir, credential) < 0)
                        return -ENOMEM;
                if (access(p, F_OK) >= 0) {
                        *ret_path = p;
                        if (ret_credential)
                                *ret_credential = true;
                        return 0;
                }
                free(p);
                if (errno != ENOENT)
                        return -errno;
        }
        if (isempty(key_file))
                return -ENOENT;
        p = strdup(key_file);
        if (!p)
                return -ENOMEM;
        *ret_path = p;
        if (ret_credential)
                *ret_credential = false;
        return 0;
}

static int read_key(const char *path, CryptKey **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_(crypt_key_freep) CryptKey *k = NULL;
        uint8_t extra;
        struct stat st;
        size_t got = 0;
        ssize_t n;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        if (st.st_mode & 0077)
                return -EPERM;
        if (st.st_size != CRYPT_KEY_SIZE)
                return -EBADMSG;

        k = new0(CryptKey, 1);
        if (!k)
                return -ENOMEM;
        while (got < sizeof k->bytes) {
                n = read(fd, k->bytes + got, sizeof k->bytes - got);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EBADMSG;   /* shrank under us */
                got += (size_t) n;
        }
        do
                n = read(fd, &extra, 1);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        if (n > 0) {
                explicit_wipe(&extra, sizeof extra);
                return -EBADMSG;           /* grew under us */
        }
        *ret = TAKE_PTR(k);
        return 0;
}

static int write_all(int fd, const void *p, size_t n) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = write(fd, q, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                q += k;
                n -= (size_t) k;
        }
        return 0;
}

static int fsync_dir(const char *dir) {
        _cleanup_close_ int fd = -EBADF;

        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        return fsync(fd) < 0 ? -errno : 0;
}

/* Moves tmp to path unless path exists: a key is never replaced, not even
 * by another broker starting at the same moment. */
static int rename_noreplace(const char *tmp, const char *path) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) >= 0)
                return 0;
        if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
                return -errno;
        /* The file system cannot rename without replacing: link() never
         * replaces either. */
        if (link(tmp, path) < 0)
                return -errno;
        (void) unlink(tmp);
        return 0;
}

static int create_key(const char *path) {
        _cleanup_free_ char *tmp = NULL, *dir = NULL;
        _cleanup_close_ int fd = -EBADF;
        uint8_t key[CRYPT_KEY_SIZE];
        const char *slash;
        int r;

        slash = strrchr(path, '/');
        if (slash)
                dir = strndup(path, slash == path ? 1 : (size_t) (slash - path));
        else
                dir = strdup(".");
        if (!dir)
                return -ENOMEM;
        if (asprintf(&tmp, "%s/.#%sXXXXXX", dir, slash ? slash + 1 : path) < 0)
                return -ENOMEM;

        fd = mkostemp(tmp, O_CLOEXEC);   /* 0600 */
        if (fd < 0)
                return -errno;
        r = fchmod(fd, 0600) < 0 ? -errno : 0;
        if (r >= 0)
                r = random_bytes(key, sizeof key);
        if (r >= 0)
                r = write_all(fd, key, sizeof key);
        explicit_wipe(key, sizeof key);
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (r >= 0)
                r = rename_noreplace(tmp, path);
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        return fsync_dir(dir);
}

int crypt_key_load(const char *path, bool create, CryptKey **ret, bool *ret_created) {
        bool created = false;
        int r;

        r = read_key(path, ret);
        if (r == -ENOENT && create) {
                r = create_key(path);
                if (r >= 0)
                        created = true;
                else if (r != -EEXIST)   /* -EEXIST: someone else made it first */
                        return r;
                r = read_key(path, ret);
        }
        if (r < 0)
                return r;
        if (ret_created)
                *ret_created = created;
        return 0;
}

/* ---- sealing ------------------------------------------------------- */

/* The context of k for one direction, keyed on first use. */
static int key_ctx(CryptKey *k, bool seal, EVP_CIPHER_CTX **ret) {
        EVP_CIPHER_CTX **c = seal ? &k->seal_ctx : &k->open_ctx;
        EVP_CIPHER_CTX *n;
        int ok;

        if (!*c) {
                n = EVP_CIPHER_CTX_new();
                if (!n)
                        return -ENOMEM;
                /* GCM's default IV length is 12 bytes: no EVP_CTRL_GCM_SET_IVLEN. */
                ok = seal ? EVP_EncryptInit_ex(n, EVP_aes_256_gcm(), NULL, k->bytes, NULL)
                          : EVP_DecryptInit_ex(n, EVP_aes_256_gcm(), NULL, k->bytes, NULL);
                if (ok != 1) {
                        EVP_CIPHER_CTX_free(n);
                        return -EIO;
                }
                *c = n;
        }
        *ret = *c;
        return 0;
}

/* Nonces come from a pool of getrandom() bytes per thread: one 4 KiB
 * refill serves 341 seals instead of a syscall each (the loop seals every
 * refreshed token; the writer thread may seal too, with its own pool).
 * GCM needs nonces that never repeat under a key, not secret ones, and
 * random 96-bit nonces from the kernel's generator are as unique read 4
 * KiB at a time as 12 bytes at a time; each byte is handed out once. A
 * child of fork() would hand out the parent's next nonces again: a fork
 * handler empties the forking thread's pool (the only thread the child
 * has). The daemon does not fork without exec (notify_command goes
 * through posix_spawn()), so that is a guard for whoever comes next. */
#define NONCE_POOL_SIZE 4096

static __thread struct {
        uint8_t b[NONCE_POOL_SIZE];
        size_t left;              /* unused bytes, at the end of b */
} nonce_pool;

static pthread_once_t nonce_once = PTHREAD_ONCE_INIT;

static void nonce_pool_empty(void) {
        explicit_wipe(nonce_pool.b, sizeof nonce_pool.b);
        nonce_pool.left = 0;
}

static void nonce_at_fork(void) {
        (void) pthread_atfork(NULL, NULL, nonce_pool_empty);
}

static int nonce_new(uint8_t *nonce, size_t n) {
        int r;

        assert(n <= NONCE_POOL_SIZE);
        if (nonce_pool.left < n) {
                r = pthread_once(&nonce_once, nonce_at_fork);
                if (r != 0)
                        return -r;
                r = random_bytes(nonce_pool.b, sizeof nonce_pool.b);
                if (r < 0)
                        return r;
                nonce_pool.left = sizeof nonce_pool.b;
        }
        memcpy(nonce, nonce_pool.b + sizeof nonce_pool.b - nonce_pool.left, n);
        /* handed out once: gone from the pool */
        explicit_wipe(nonce_pool.b + sizeof nonce_pool.b - nonce_pool.left, n);
        nonce_pool.left -= n;
        return 0;
}

int crypt_seal(CryptKey *k, const void *aad, size_t aad_size, const void *p, size_t n, uint8_t **ret,
               size_t *ret_size) {
        _cleanup_free_ uint8_t *out = NULL;
        EVP_CIPHER_CTX *ctx;
        uint8_t *nonce, *ct, *tag;
        int len, r;

        assert(k);
        if (n > CRYPT_PLAINTEXT_MAX || aad_size > INT_MAX)
                return -EFBIG;

        out = malloc(CRYPT_OVERHEAD + n);
        if (!out)
                return -ENOMEM;
        out[0] = CRYPT_VERSION;
        nonce = out + 1;
        ct = nonce + CRYPT_NONCE_SIZE;
        tag = ct + n;
        r = nonce_new(nonce, CRYPT_NONCE_SIZE);
        if (r < 0)
                return r;

        r = key_ctx(k, true, &ctx);
        if (r < 0)
                return r;
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1)
                return -EIO;
        /* The version byte is authenticated too: a value cannot be passed
         * off as another format. */
        if (EVP_EncryptUpdate(ctx, NULL, &len, out, 1) != 1)
                return -EIO;
        if (aad_size > 0 && EVP_EncryptUpdate(ctx, NULL, &len, aad, (int) aad_size) != 1)
                return -EIO;
        len = 0;
        if (n > 0 && EVP_EncryptUpdate(ctx, ct, &len, p, (int) n) != 1)
                return -EIO;
        if ((size_t) len != n)
                return -EIO;
        if (EVP_EncryptFinal_ex(ctx, ct + len, &len) != 1 || len != 0)
                return -EIO;
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRYPT_TAG_SIZE, tag) != 1)
                return -EIO;

        *ret = TAKE_PTR(out);
        *ret_size = CRYPT_OVERHEAD + n;
        return 0;
}

int crypt_open_parts(CryptKey *k, const void *aad, size_t aad_size, const uint8_t nonce[static CRYPT_NONCE_SIZE],
                     const void *ct, size_t m, const uint8_t tag[static CRYPT_TAG_SIZE], char *out) {
        static const uint8_t version = CRYPT_VERSION;
        EVP_CIPHER_CTX *ctx;
        int len, ok, r;

        assert(k);
        if (m > CRYPT_PLAINTEXT_MAX || aad_size > INT_MAX)
                return -EFBIG;
        r = key_ctx(k, false, &ctx);
        if (r < 0)
                return r;

        ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1 &&
             EVP_DecryptUpdate(ctx, NULL, &len, &version, 1) == 1 &&
             (aad_size == 0 || EVP_DecryptUpdate(ctx, NULL, &len, aad, (int) aad_size) == 1);
        len = 0;
        /* in place (out == ct) or into disjoint memory: both are fine
         * for EVP_DecryptUpdate() */
        ok = ok && (m == 0 || EVP_DecryptUpdate(ctx, (uint8_t *) out, &len, ct, (int) m) == 1) &&
             (size_t) len == m &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRYPT_TAG_SIZE, (void *) tag) == 1;
        /* The tag is checked here; until then out is unauthenticated. */
        ok = ok && EVP_DecryptFinal_ex(ctx, (uint8_t *) out + len, &len) == 1 && len == 0;
        if (!ok) {
                explicit_wipe(out, m + 1);
                return -EBADMSG;
        }
        out[m] = 0;
        return (int) m;
}

int crypt_open_into(CryptKey *k, const void *aad, size_t aad_size, const void *sealed, size_t n, char *out,
                    size_t cap) {
        const uint8_t *in = sealed, *nonce, *ct;
        size_t m;

        assert(k);
        if (n < 1)
                return -EBADMSG;
        if (in[0] != CRYPT_VERSION)
                return -EPROTONOSUPPORT;
        if (n < CRYPT_OVERHEAD)
                return -EBADMSG;
        m = n - CRYPT_OVERHEAD;
        if (m > CRYPT_PLAINTEXT_MAX || aad_size > INT_MAX)
                return -EFBIG;
        if (cap < m + 1)
                return -ENOBUFS;
        nonce = in + 1;
        ct = nonce + CRYPT_NONCE_SIZE;
        return crypt_open_parts(k, aad, aad_size, nonce, ct, m, ct + m, out);
}

int crypt_key_prepare_open(CryptKey *k) {
        EVP_CIPHER_CTX *ctx;

        return key_ctx(k, false, &ctx);
}

int crypt_open(CryptKey *k, const void *aad, size_t aad_size, const void *sealed, size_t n, char **ret,
               size_t *ret_size) {
        /* a size crypt_open_into() refuses gets a byte: it never writes it */
        size_t cap = n >= CRYPT_OVERHEAD && n - CRYPT_OVERHEAD <= CRYPT_PLAINTEXT_MAX ? n - CRYPT_OVERHEAD + 1 : 1;
        char *out;
        int r;

        out = malloc(cap);
        if (!out)
                return -ENOMEM;
        r = crypt_open_into(k, aad, aad_size, sealed, n, out, cap);
        if (r < 0) {
                free(out);
                return r;
        }
        *ret = out;
        if (ret_size)
                *ret_size = (size_t) r;
        return 0;
}
