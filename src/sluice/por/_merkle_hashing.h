/*
 * The byte layout of the proof-of-liabilities tree in C: every hash it is made of (the same
 * functions as sluice/por/hashing.py). Included once, by _merkle.c.
 */
#ifndef SLUICE_MERKLE_HASHING_H
#define SLUICE_MERKLE_HASHING_H

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

#define SUM_LIMIT (((u128)1) << 127)
#define HASH_SIZE 32

/* ---------------------------------------------------------------- byte helpers */

/* SHA-256 of one buffer. Not OpenSSL's SHA256(): since OpenSSL 3 that one looks the algorithm
 * up through EVP on every call, which costs more than the hashing of a node. */
static void sha256(const uint8_t *data, size_t size, uint8_t *out) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data, size);
    SHA256_Final(out, &ctx);
}

static void put_u128be(uint8_t *out, u128 value) {
    for (int i = 15; i >= 0; i--) {
        out[i] = (uint8_t)(value & 0xff);
        value >>= 8;
    }
}

static void put_u64be(uint8_t *out, uint64_t value) {
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)(value & 0xff);
        value >>= 8;
    }
}

static void hash_node(uint8_t *out, const uint8_t *left, u128 left_sum, const uint8_t *right,
                      u128 right_sum) {
    uint8_t buffer[1 + 2 * (HASH_SIZE + 16)];
    buffer[0] = 0x01;
    memcpy(buffer + 1, left, HASH_SIZE);
    put_u128be(buffer + 1 + HASH_SIZE, left_sum);
    memcpy(buffer + 1 + HASH_SIZE + 16, right, HASH_SIZE);
    put_u128be(buffer + 1 + 2 * HASH_SIZE + 16, right_sum);
    sha256(buffer, sizeof buffer, out);
}

static void hash_padding_leaf(uint8_t *out, uint64_t index, const uint8_t *snapshot_hash) {
    uint8_t buffer[1 + 8 + HASH_SIZE];
    buffer[0] = 0x02;
    put_u64be(buffer + 1, index);
    memcpy(buffer + 9, snapshot_hash, HASH_SIZE);
    sha256(buffer, sizeof buffer, out);
}

/* The hash of the padding-only subtree of 2^level leaves whose first leaf is at `first`. */
static void hash_padding_subtree(uint8_t *out, uint64_t first, int level,
                                 const uint8_t *snapshot_hash) {
    uint8_t stack[64][HASH_SIZE];
    int heights[64];
    int top = 0;
    uint64_t count = (uint64_t)1 << level;
    for (uint64_t i = 0; i < count; i++) {
        hash_padding_leaf(stack[top], first + i, snapshot_hash);
        heights[top] = 0;
        top++;
        while (top >= 2 && heights[top - 1] == heights[top - 2]) {
            uint8_t parent[HASH_SIZE];
            hash_node(parent, stack[top - 2], 0, stack[top - 1], 0);
            memcpy(stack[top - 2], parent, HASH_SIZE);
            heights[top - 2]++;
            top--;
        }
    }
    memcpy(out, stack[0], HASH_SIZE);
}

static void hmac_prepare(const uint8_t *secret, size_t secret_size, const char *snapshot,
                         size_t snapshot_size, SHA256_CTX *inner, SHA256_CTX *outer) {
    uint8_t key[64] = {0};
    uint8_t pad[64];
    if (secret_size > 64) {
        sha256(secret, secret_size, key);
    } else {
        memcpy(key, secret, secret_size);
    }
    for (int i = 0; i < 64; i++) pad[i] = key[i] ^ 0x36;
    SHA256_Init(inner);
    SHA256_Update(inner, pad, 64);
    SHA256_Update(inner, snapshot, snapshot_size);
    SHA256_Update(inner, "\0", 1);
    for (int i = 0; i < 64; i++) pad[i] = key[i] ^ 0x5c;
    SHA256_Init(outer);
    SHA256_Update(outer, pad, 64);
}

static void compute_nonce(uint8_t *out, const SHA256_CTX *inner, const SHA256_CTX *outer,
                          const char *customer, size_t customer_size) {
    SHA256_CTX ctx = *inner;
    uint8_t inner_hash[HASH_SIZE];
    SHA256_Update(&ctx, customer, customer_size);
    SHA256_Final(inner_hash, &ctx);
    ctx = *outer;
    SHA256_Update(&ctx, inner_hash, HASH_SIZE);
    SHA256_Final(out, &ctx);
}

static void compute_uid(uint8_t *out, const uint8_t *nonce, const char *customer,
                        size_t customer_size) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, nonce, HASH_SIZE);
    SHA256_Update(&ctx, customer, customer_size);
    SHA256_Final(out, &ctx);
}

static void compute_leaf(uint8_t *out, const uint8_t *instrument_hash, const uint8_t *uid,
                         u128 units) {
    uint8_t buffer[1 + 2 * HASH_SIZE + 16];
    buffer[0] = 0x00;
    memcpy(buffer + 1, instrument_hash, HASH_SIZE);
    memcpy(buffer + 1 + HASH_SIZE, uid, HASH_SIZE);
    put_u128be(buffer + 1 + 2 * HASH_SIZE, units);
    sha256(buffer, sizeof buffer, out);
}

/* SHA-256(a || "/" || b), or SHA-256(a) when b is NULL. */
static void hash_label(uint8_t *out, const char *a, size_t a_size, const char *b,
                       size_t b_size) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, a, a_size);
    if (b != NULL) {
        SHA256_Update(&ctx, "/", 1);
        SHA256_Update(&ctx, b, b_size);
    }
    SHA256_Final(out, &ctx);
}

#endif
