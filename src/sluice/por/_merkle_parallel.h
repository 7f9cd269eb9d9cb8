/*
 * The machinery of the C tree's build that is not about hashes: the leaves' order (a radix sort
 * on 64-bit keys) and the split of a loop over threads. Included once, by _merkle.c.
 */
#ifndef SLUICE_MERKLE_PARALLEL_H
#define SLUICE_MERKLE_PARALLEL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key; /* the uid's first 8 bytes, big-endian: the sort key */
    uint32_t position;
} order_t;

static int compare_order(const void *a, const void *b) {
    const order_t *left = a, *right = b;
    if (left->key < right->key) return -1;
    if (left->key > right->key) return 1;
    return 0;
}

/* Sorts by the 64-bit key: an LSD radix sort in four passes of 16 bits (uids are uniform, and
 * at ten million leaves this is seconds faster than qsort); qsort for small counts. */
static int sort_by_key(order_t *order, size_t count) {
    if (count < 4096) {
        qsort(order, count, sizeof(order_t), compare_order);
        return 0;
    }
    order_t *buffer = malloc(count * sizeof(order_t));
    size_t *counts = malloc(65536 * sizeof(size_t));
    if (buffer == NULL || counts == NULL) {
        free(buffer);
        free(counts);
        return -1;
    }
    order_t *from = order, *to = buffer;
    for (int shift = 0; shift < 64; shift += 16) {
        memset(counts, 0, 65536 * sizeof(size_t));
        for (size_t i = 0; i < count; i++) counts[(from[i].key >> shift) & 0xffff]++;
        size_t total = 0;
        for (size_t digit = 0; digit < 65536; digit++) {
            size_t here = counts[digit];
            counts[digit] = total;
            total += here;
        }
        for (size_t i = 0; i < count; i++) to[counts[(from[i].key >> shift) & 0xffff]++] = from[i];
        order_t *swap = from;
        from = to;
        to = swap;
    }
    /* Four passes: the sorted records are back in `order`. */
    free(buffer);
    free(counts);
    return 0;
}

/* ---------------------------------------------------------------- threads */

/* The hashing of a build is split over the cores this process may run on (at most 8): contiguous
 * ranges of leaves or nodes, each written by one thread only. Worker threads never touch a Python
 * object. A thread that cannot be started leaves its range to the calling thread. */
#define THREADS_MAX 8

typedef void (*range_fn)(void *context, size_t start, size_t end);

typedef struct {
    range_fn fn;
    void *context;
    size_t start, end;
} job_t;

static void *run_job(void *argument) {
    job_t *job = argument;
    job->fn(job->context, job->start, job->end);
    return NULL;
}

static int thread_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int count = CPU_COUNT(&set);
    return count < 1 ? 1 : (count > THREADS_MAX ? THREADS_MAX : count);
}

static void parallel_for(range_fn fn, void *context, size_t count, int threads, size_t minimum) {
    if (threads <= 1 || count < minimum) {
        fn(context, 0, count);
        return;
    }
    pthread_t ids[THREADS_MAX];
    job_t jobs[THREADS_MAX];
    int started[THREADS_MAX] = {0};
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){fn, context, count * (size_t)t / (size_t)threads,
                          count * (size_t)(t + 1) / (size_t)threads};
    }
    for (int t = 1; t < threads; t++) {
        started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
    }
    fn(context, jobs[0].start, jobs[0].end);
    for (int t = 1; t < threads; t++) {
        if (started[t]) {
            pthread_join(ids[t], NULL);
        } else {
            fn(context, jobs[t].start, jobs[t].end);
        }
    }
}

#endif
