/* SPDX-License-Identifier: MIT */
#pragma once

#include "common/macro.h"

/* Encryption at rest: AES-256-GCM over the secret columns of the store, and
 * the loading of its key. Library-level: returns -errno and never logs.
 *
 * A sealed value is
 *
 *      version (1 byte, CRYPT_VERSION) | nonce (12) | ciphertext (n) | tag (16)
 *
 * with a fresh random nonce per seal (NIST SP 800-38D 8.2.2: random 96-bit
 * nonces are safe up to 2^32 seals under one key). The tag covers the
 * version byte and the caller's associated data, so a value moved to
 * another row or column, or relabelled, fails to open. */

#define CRYPT_KEY_SIZE 32        /* AES-256 */
#define CRYPT_NONCE_SIZE 12      /* GCM's 96-bit IV */
#define CRYPT_TAG_SIZE 16        /* full-length tag */
#define CRYPT_VERSION 0x01
#define CRYPT_OVERHEAD (1 + CRYPT_NONCE_SIZE + CRYPT_TAG_SIZE)
#define CRYPT_PLAINTEXT_MAX (16U * 1024U * 1024U)

/* The name of the systemd credential and of the default key file. */
#define CRYPT_KEY_NAME "tokenbroker.key"

struct evp_cipher_ctx_st;

/* A key, and the cipher contexts keyed with it on first use: a seal or an
 * open then only sets the nonce, which is three times as fast as keying a
 * context each time (it matters when a million connections load). */
typedef struct CryptKey {
        uint8_t bytes[CRYPT_KEY_SIZE];
        struct evp_cipher_ctx_st *seal_ctx, *open_ctx;
} CryptKey;

/* Wipes the key (and its contexts) before freeing it. */
CryptKey *crypt_key_free(CryptKey *k);
DEFINE_TRIVIAL_CLEANUP_FUNC(CryptKey *, crypt_key_free);

int crypt_key_new(const void *bytes, size_t n, CryptKey **ret);   /* n must be CRYPT_KEY_SIZE */
int crypt_key_dup(const CryptKey *k, CryptKey **ret);     /* the bytes only */

/* Where the key comes from: $CREDENTIALS_DIRECTORY/credential when that
 * variable is set and the credential exists (systemd LoadCredential= or
 * LoadCredentialEncrypted=), else key_file. ret_path is owned by the
 * caller; ret_credential (may be NULL) says which one it is. */
int crypt_key_find(const char *credential, const char *key_file, char **ret_path, bool *ret_credential);

/* Reads the key at path: a regular file of exactly CRYPT_KEY_SIZE bytes
 * with no group or other permission bits. With create, a missing file is
 * created first: random, mode 0600, written atomically (temporary file,
 * fsync, rename without replacing, fsync of the folder). Errors beside the
 * usual ones:
 *      -EPERM   the file has group or other permission bits
 *      -EBADMSG the file is not CRYPT_KEY_SIZE bytes long
 *      -EBADF   not a regular file
 * ret_created (may be NULL) says whether this call created the file. */
int crypt_key_load(const char *path, bool create, CryptKey **ret, bool *ret_created);

/* Seals n bytes of p bound to aad. *ret (size CRYPT_OVERHEAD + n) is
 * allocated and owned by the caller. */
int crypt_seal(CryptKey *k, const void *aad, size_t aad_size, const void *p, size_t n, uint8_t **ret,
               size_t *ret_size);

/* Opens what crypt_seal() made under the same key and aad. *ret is
 * allocated, NUL-terminated (not counted in ret_size) and owned by the
 * caller, who should wipe it. -EBADMSG when the value is truncated, was
 * modified, was sealed under another key or is bound to other data;
 * -EPROTONOSUPPORT for a version byte this build does not know. */
int crypt_open(CryptKey *k, const void *aad, size_t aad_size, const void *sealed, size_t n, char **ret,
               size_t *ret_size);
/* The same into out (cap bytes; the plaintext is n - CRYPT_OVERHEAD bytes
 * and a NUL): its length, or the errors above, -ENOBUFS if cap is too
 * small. On -EBADMSG out's first n - CRYPT_OVERHEAD + 1 bytes are wiped.
 * For a load that puts two values in one allocation. */
int crypt_open_into(CryptKey *k, const void *aad, size_t aad_size, const void *sealed, size_t n, char *out,
                    size_t cap);
/* The same from a value's parts (its version byte is CRYPT_VERSION, checked
 * by the caller): the m bytes of ciphertext at ct into out (m + 1 bytes;
 * out may be ct itself: decrypted in place). Its length, or -EBADMSG (out's
 * first m + 1 bytes wiped), -EFBIG. For a load that splits reading a value
 * from opening it. */
int crypt_open_parts(CryptKey *k, const void *aad, size_t aad_size, const uint8_t nonce[static CRYPT_NONCE_SIZE],
                     const void *ct, size_t m, const uint8_t tag[static CRYPT_TAG_SIZE], char *out);
/* Makes k's opening context now (0, -ENOMEM, -EIO), so that opening
 * allocates nothing: for a key another thread opens with. A CryptKey is
 * one thread's at a time; give each thread its own (crypt_key_dup()). */
int crypt_key_prepare_open(CryptKey *k);
