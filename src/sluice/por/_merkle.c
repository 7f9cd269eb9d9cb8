/*
 * sluice.por._merkle: the proof-of-liabilities Merkle-sum tree in C.
 *
 * The construction is the one of docs/proof-of-reserves.md and of the pure-Python
 * sluice.por.tree (which gives byte-identical roots and proofs); this module only makes it fast
 * enough for ten million customers (the Python loop alone costs more than the hashing).
 *
 *   nonce = HMAC-SHA-256(secret, snapshot_id || 0x00 || customer_id)
 *   uid   = SHA-256(nonce || customer_id)
 *   leaf  = SHA-256(0x00 || SHA-256(snapshot_id || "/" || instrument) || uid || u128be(units))
 *   node  = SHA-256(0x01 || h_left || u128be(sum_left) || h_right || u128be(sum_right))
 *   pad   = SHA-256(0x02 || u64be(index) || SHA-256(snapshot_id))            (sum 0)
 *
 * Leaves are ordered by uid (bytewise ascending) and the leaf level is padded to a power of two.
 * Memory: per level only the nodes that hold at least one real leaf are kept (hash and sum,
 * 48 bytes), about 2n nodes in all. A node that holds padding only is the sibling of a kept node
 * at most once per level, at the right edge; that one hash per level is computed while building
 * (hashing its padding subtree with a stack as deep as the level) and kept, and no padding leaf
 * is stored.
 *
 * Sums are unsigned 128-bit integers checked below 2^127 at every leaf and every parent, so no
 * addition of two checked sums can wrap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_merkle_hashing.h"
#include "_merkle_parallel.h"
#include "_merkle_units.h"

typedef struct {
    uint8_t hash[HASH_SIZE];
    u128 sum;
} node_t;

typedef struct {
    PyObject_HEAD
    Py_ssize_t leaf_count;
    int depth;
    node_t **levels;           /* levels[j]: counts[j] nodes, j = 0 (leaves) .. depth (root) */
    Py_ssize_t *counts;
    uint8_t (*padding)[HASH_SIZE]; /* padding[j]: the padding-only node at index counts[j] */
    uint8_t root_hash[HASH_SIZE];
    u128 total;
    uint32_t *leaf_of_input;
    uint32_t *input_of_leaf;
    PyObject *customer_ids;    /* the caller's sequence (kept to recompute nonces) */
    SHA256_CTX hmac_inner;     /* HMAC inner state with snapshot_id || 0x00 absorbed */
    SHA256_CTX hmac_outer;
} TreeObject;

/* ---------------------------------------------------------------- the tree object */

static void tree_free_buffers(TreeObject *self) {
    if (self->levels != NULL) {
        for (int j = 0; j <= self->depth; j++) PyMem_RawFree(self->levels[j]);
        PyMem_RawFree(self->levels);
        self->levels = NULL;
    }
    PyMem_RawFree(self->counts);
    self->counts = NULL;
    PyMem_RawFree(self->padding);
    self->padding = NULL;
    PyMem_RawFree(self->leaf_of_input);
    self->leaf_of_input = NULL;
    PyMem_RawFree(self->input_of_leaf);
    self->input_of_leaf = NULL;
}

static void tree_dealloc(TreeObject *self) {
    tree_free_buffers(self);
    Py_XDECREF(self->customer_ids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Sorts by the 64-bit prefix, then settles runs of equal prefixes by the full uid. */
static const node_t *sort_uids;
static int compare_full(const void *a, const void *b) {
    const order_t *left = a, *right = b;
    return memcmp(sort_uids[left->position].hash, sort_uids[right->position].hash, HASH_SIZE);
}

static int depth_for(Py_ssize_t count) {
    int depth = 0;
    while (((Py_ssize_t)1 << depth) < count) depth++;
    return depth;
}

static PyTypeObject TreeType;

#define PARALLEL_MINIMUM 16384

typedef struct {
    uint8_t (*parts)[HASH_SIZE];
    uint64_t first;
    int level;
    const uint8_t *snapshot_hash;
} padding_job_t;

static void padding_range(void *argument, size_t start, size_t end) {
    padding_job_t *job = argument;
    for (size_t part = start; part < end; part++) {
        hash_padding_subtree(job->parts[part], job->first + ((uint64_t)part << job->level),
                             job->level, job->snapshot_hash);
    }
}

/* hash_padding_subtree over `threads` cores: 2, 4 or 8 subtrees at once, then joined. */
static void hash_padding_parallel(uint8_t *out, uint64_t first, int level,
                                  const uint8_t *snapshot_hash, int threads) {
    int split = 0;
    while ((1 << split) < threads && split < 3) split++;
    if (level < 14 || split == 0) {
        hash_padding_subtree(out, first, level, snapshot_hash);
        return;
    }
    uint8_t parts[1 << 3][HASH_SIZE];
    padding_job_t job = {parts, first, level - split, snapshot_hash};
    parallel_for(padding_range, &job, (size_t)1 << split, threads, 1);
    for (int width = 1 << split; width > 1; width /= 2) {
        for (int i = 0; i < width / 2; i++) {
            uint8_t parent[HASH_SIZE];
            hash_node(parent, parts[2 * i], 0, parts[2 * i + 1], 0);
            memcpy(parts[i], parent, HASH_SIZE);
        }
    }
    memcpy(out, parts[0], HASH_SIZE);
}


/* Phase 1: nonce and uid of every input. The UTF-8 bytes of the ids and the units are read with
 * the GIL held (pointer and length parked in the uid's slot), then hashed by the threads while
 * this thread keeps holding the GIL, so no Python code can free a string under them. */
typedef struct {
    TreeObject *tree;
    node_t *uids;
} inputs_job_t;

static void hash_inputs(void *argument, size_t start, size_t end) {
    inputs_job_t *job = argument;
    for (size_t i = start; i < end; i++) {
        const char *customer;
        size_t size;
        memcpy(&customer, job->uids[i].hash, sizeof customer);
        memcpy(&size, job->uids[i].hash + sizeof customer, sizeof size);
        uint8_t nonce[HASH_SIZE];
        compute_nonce(nonce, &job->tree->hmac_inner, &job->tree->hmac_outer, customer, size);
        compute_uid(job->uids[i].hash, nonce, customer, size);
    }
}

static node_t *read_inputs(TreeObject *tree, PyObject **ids, PyObject **units, Py_ssize_t n,
                           int threads) {
    node_t *uids = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(node_t));
    if (uids == NULL) return (node_t *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size;
        if (!PyUnicode_Check(ids[i])) {
            PyErr_Format(PyExc_TypeError, "customer id at position %zd is not a str", i);
            goto fail;
        }
        const char *customer = PyUnicode_AsUTF8AndSize(ids[i], &size);
        if (customer == NULL) goto fail;
        int status = read_units(units[i], &uids[i].sum);
        if (status != UNITS_OK) {
            raise_units_error(status, units[i], PyUnicode_FromFormat("customer %U", ids[i]));
            goto fail;
        }
        size_t length = (size_t)size;
        memcpy(uids[i].hash, &customer, sizeof customer);
        memcpy(uids[i].hash + sizeof customer, &length, sizeof length);
    }
    inputs_job_t job = {tree, uids};
    parallel_for(hash_inputs, &job, (size_t)n, threads, PARALLEL_MINIMUM);
    return uids;
fail:
    PyMem_RawFree(uids);
    return NULL;
}

/* Phase 2: leaf order by uid; refuses a customer id given twice (equal uids). */
static int order_leaves(TreeObject *tree, const node_t *uids, Py_ssize_t n) {
    order_t *order = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(order_t));
    tree->leaf_of_input = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(uint32_t));
    tree->input_of_leaf = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(uint32_t));
    if (order == NULL || tree->leaf_of_input == NULL || tree->input_of_leaf == NULL) {
        PyMem_RawFree(order);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key = 0;
        for (int b = 0; b < 8; b++) key = (key << 8) | uids[i].hash[b];
        order[i].key = key;
        order[i].position = (uint32_t)i;
    }
    int sorted;
    Py_BEGIN_ALLOW_THREADS
    sorted = sort_by_key(order, (size_t)n);
    Py_END_ALLOW_THREADS
    if (sorted < 0) {
        PyMem_RawFree(order);
        PyErr_NoMemory();
        return -1;
    }
    sort_uids = uids;
    for (Py_ssize_t start = 0; start < n;) {
        Py_ssize_t end = start + 1;
        while (end < n && order[end].key == order[start].key) end++;
        if (end - start > 1) qsort(order + start, (size_t)(end - start), sizeof(order_t), compare_full);
        start = end;
    }
    sort_uids = NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t position = order[k].position;
        if (k > 0 && memcmp(uids[order[k - 1].position].hash, uids[position].hash, HASH_SIZE) == 0) {
            PyObject *customer = PySequence_Fast_GET_ITEM(tree->customer_ids, position);
            PyErr_Format(PyExc_ValueError, "customer %S appears more than once", customer);
            PyMem_RawFree(order);
            return -1;
        }
        tree->input_of_leaf[k] = position;
        tree->leaf_of_input[position] = (uint32_t)k;
    }
    PyMem_RawFree(order);
    return 0;
}

/* Phase 3: the leaves in uid order (no Python objects: runs without the GIL). */
typedef struct {
    TreeObject *tree;
    const node_t *uids;
    const uint8_t *instrument_hash;
} leaves_job_t;

static void leaves_range(void *argument, size_t start, size_t end) {
    leaves_job_t *job = argument;
    node_t *leaves = job->tree->levels[0];
    for (size_t k = start; k < end; k++) {
        const node_t *source = &job->uids[job->tree->input_of_leaf[k]];
        compute_leaf(leaves[k].hash, job->instrument_hash, source->hash, source->sum);
        leaves[k].sum = source->sum;
    }
}

static void compute_leaves(TreeObject *tree, const node_t *uids, const uint8_t *instrument_hash,
                           const uint8_t *snapshot_hash, int threads) {
    if (tree->leaf_count == 0) {
        hash_padding_leaf(tree->levels[0][0].hash, 0, snapshot_hash);
        tree->levels[0][0].sum = 0;
        return;
    }
    leaves_job_t job = {tree, uids, instrument_hash};
    parallel_for(leaves_range, &job, (size_t)tree->leaf_count, threads, PARALLEL_MINIMUM);
}

/* Phase 4: the levels above the leaves, to the root (runs without the GIL). */
typedef struct {
    const node_t *below;
    node_t *above;
    Py_ssize_t count; /* nodes below */
    const uint8_t *padding;
    int overflow;
} level_job_t;

static void level_range(void *argument, size_t start, size_t end) {
    level_job_t *job = argument;
    for (size_t m = start; m < end; m++) {
        const node_t *left = &job->below[2 * m];
        if ((Py_ssize_t)(2 * m + 1) < job->count) {
            const node_t *right = &job->below[2 * m + 1];
            u128 sum = left->sum + right->sum;
            if (sum >= SUM_LIMIT) __atomic_store_n(&job->overflow, 1, __ATOMIC_RELAXED);
            hash_node(job->above[m].hash, left->hash, left->sum, right->hash, right->sum);
            job->above[m].sum = sum;
        } else {
            hash_node(job->above[m].hash, left->hash, left->sum, job->padding, 0);
            job->above[m].sum = left->sum;
        }
    }
}

static int build_levels(TreeObject *tree, const uint8_t *snapshot_hash, int threads) {
    int overflow = 0;
    for (int j = 0; j < tree->depth; j++) {
        Py_ssize_t count = tree->counts[j];
        if (count % 2 == 1) {
            hash_padding_parallel(tree->padding[j], (uint64_t)count << j, j, snapshot_hash,
                                  threads);
        }
        level_job_t job = {tree->levels[j], tree->levels[j + 1], count, tree->padding[j], 0};
        parallel_for(level_range, &job, (size_t)tree->counts[j + 1], threads, PARALLEL_MINIMUM);
        overflow |= job.overflow;
    }
    return overflow ? -1 : 0;
}

static PyObject *merkle_build(PyObject *module, PyObject *args) {
    Py_buffer secret;
    const char *snapshot, *instrument;
    Py_ssize_t snapshot_size, instrument_size;
    PyObject *id_sequence, *unit_sequence;
    if (!PyArg_ParseTuple(args, "y*s#s#OO:build", &secret, &snapshot, &snapshot_size, &instrument,
                          &instrument_size, &id_sequence, &unit_sequence)) {
        return NULL;
    }
    PyObject *ids = PySequence_Fast(id_sequence, "customer_ids must be a sequence");
    PyObject *units = ids ? PySequence_Fast(unit_sequence, "units must be a sequence") : NULL;
    TreeObject *tree = NULL;
    node_t *uids = NULL;
    if (units == NULL) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ids);
    if (PySequence_Fast_GET_SIZE(units) != n) {
        PyErr_SetString(PyExc_ValueError, "customer_ids and units differ in length");
        goto fail;
    }
    if (n >= ((Py_ssize_t)1 << 32)) {
        PyErr_SetString(PyExc_ValueError, "at most 2^32 - 1 leaves");
        goto fail;
    }
    tree = PyObject_New(TreeObject, &TreeType);
    if (tree == NULL) goto fail;
    tree->levels = NULL;
    tree->counts = NULL;
    tree->padding = NULL;
    tree->leaf_of_input = NULL;
    tree->input_of_leaf = NULL;
    tree->customer_ids = ids;
    ids = NULL;
    tree->leaf_count = n;
    tree->depth = depth_for(n);
    hmac_prepare(secret.buf, (size_t)secret.len, snapshot, (size_t)snapshot_size,
                 &tree->hmac_inner, &tree->hmac_outer);

    uint8_t instrument_hash[HASH_SIZE], snapshot_hash[HASH_SIZE];
    hash_label(instrument_hash, snapshot, (size_t)snapshot_size, instrument,
               (size_t)instrument_size);
    hash_label(snapshot_hash, snapshot, (size_t)snapshot_size, NULL, 0);

    PyObject **id_items = PySequence_Fast_ITEMS(tree->customer_ids);
    int threads = thread_count();
    uids = read_inputs(tree, id_items, PySequence_Fast_ITEMS(units), n, threads);
    if (uids == NULL) goto fail;
    if (order_leaves(tree, uids, n) < 0) goto fail;

    int depth = tree->depth;
    tree->levels = PyMem_RawCalloc((size_t)depth + 1, sizeof(node_t *));
    tree->counts = PyMem_RawCalloc((size_t)depth + 1, sizeof(Py_ssize_t));
    tree->padding = PyMem_RawCalloc((size_t)depth + 1, HASH_SIZE);
    if (tree->levels == NULL || tree->counts == NULL || tree->padding == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    /* The leaves first, then the uids are freed before the levels above are allocated: at ten
     * million customers that keeps half a gigabyte off the peak. */
    Py_ssize_t count = n ? n : 1;
    for (int j = 0; j <= depth; j++) {
        tree->counts[j] = count;
        count = (count + 1) / 2;
    }
    tree->levels[0] = PyMem_RawMalloc((size_t)tree->counts[0] * sizeof(node_t));
    if (tree->levels[0] == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    compute_leaves(tree, uids, instrument_hash, snapshot_hash, threads);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(uids);
    uids = NULL;
    for (int j = 1; j <= depth; j++) {
        tree->levels[j] = PyMem_RawMalloc((size_t)tree->counts[j] * sizeof(node_t));
        if (tree->levels[j] == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = build_levels(tree, snapshot_hash, threads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_SetString(PyExc_ValueError, "the total of the balances is not below 2^127");
        goto fail;
    }
    memcpy(tree->root_hash, tree->levels[depth][0].hash, HASH_SIZE);
    tree->total = tree->levels[depth][0].sum;
    Py_DECREF(units);
    PyBuffer_Release(&secret);
    return (PyObject *)tree;
fail:
    PyMem_RawFree(uids);
    Py_XDECREF(tree);
    Py_XDECREF(ids);
    Py_XDECREF(units);
    PyBuffer_Release(&secret);
    return NULL;
}

static int check_index(TreeObject *self, Py_ssize_t index, const char *what) {
    if (index < 0 || index >= self->leaf_count) {
        PyErr_Format(PyExc_IndexError, "%s %zd out of range (%zd leaves)", what, index,
                     self->leaf_count);
        return -1;
    }
    return 0;
}

static PyObject *tree_leaf_index(TreeObject *self, PyObject *arg) {
    Py_ssize_t position = PyLong_AsSsize_t(arg);
    if (position == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, position, "input position") < 0) return NULL;
    return PyLong_FromUnsignedLong(self->leaf_of_input[position]);
}

static PyObject *tree_input_position(TreeObject *self, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, index, "leaf index") < 0) return NULL;
    return PyLong_FromUnsignedLong(self->input_of_leaf[index]);
}

static PyObject *tree_nonce(TreeObject *self, PyObject *arg) {
    Py_ssize_t position = PyLong_AsSsize_t(arg);
    if (position == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, position, "input position") < 0) return NULL;
    /* The caller's list may have changed since the build: read it with checks. */
    if (position >= PySequence_Fast_GET_SIZE(self->customer_ids)) {
        PyErr_SetString(PyExc_IndexError, "the customer ids changed since the tree was built");
        return NULL;
    }
    Py_ssize_t size;
    PyObject *customer = PySequence_Fast_GET_ITEM(self->customer_ids, position);
    if (!PyUnicode_Check(customer)) {
        PyErr_SetString(PyExc_TypeError, "the customer ids changed since the tree was built");
        return NULL;
    }
    const char *text = PyUnicode_AsUTF8AndSize(customer, &size);
    if (text == NULL) return NULL;
    uint8_t nonce[HASH_SIZE];
    compute_nonce(nonce, &self->hmac_inner, &self->hmac_outer, text, (size_t)size);
    return PyBytes_FromStringAndSize((const char *)nonce, HASH_SIZE);
}

static PyObject *tree_siblings(TreeObject *self, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, index, "leaf index") < 0) return NULL;
    PyObject *result = PyList_New(self->depth);
    if (result == NULL) return NULL;
    for (int j = 0; j < self->depth; j++) {
        Py_ssize_t sibling = (index >> j) ^ 1;
        const uint8_t *hash;
        u128 sum;
        if (sibling < self->counts[j]) {
            hash = self->levels[j][sibling].hash;
            sum = self->levels[j][sibling].sum;
        } else {
            hash = self->padding[j];
            sum = 0;
        }
        PyObject *pair = Py_BuildValue("(y#N)", (const char *)hash, (Py_ssize_t)HASH_SIZE,
                                       units_to_int(sum));
        if (pair == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, j, pair);
    }
    return result;
}

static PyObject *tree_get_root_hash(TreeObject *self, void *closure) {
    return PyBytes_FromStringAndSize((const char *)self->root_hash, HASH_SIZE);
}

static PyObject *tree_get_total(TreeObject *self, void *closure) {
    return units_to_int(self->total);
}

static PyObject *tree_get_depth(TreeObject *self, void *closure) {
    return PyLong_FromLong(self->depth);
}

static PyObject *tree_get_leaf_count(TreeObject *self, void *closure) {
    return PyLong_FromSsize_t(self->leaf_count);
}

static PyMethodDef tree_methods[] = {
    {"leaf_index", (PyCFunction)tree_leaf_index, METH_O,
     "leaf_index(position) -> the leaf index of the input at this position"},
    {"input_position", (PyCFunction)tree_input_position, METH_O,
     "input_position(index) -> the input position of the leaf at this index"},
    {"nonce", (PyCFunction)tree_nonce, METH_O,
     "nonce(position) -> the 32-byte nonce of the input at this position"},
    {"siblings", (PyCFunction)tree_siblings, METH_O,
     "siblings(index) -> [(hash, units)] from the leaf upwards"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tree_getset[] = {
    {"root_hash", (getter)tree_get_root_hash, NULL, "the root's 32-byte hash", NULL},
    {"total_units", (getter)tree_get_total, NULL, "the sum of every leaf's units", NULL},
    {"depth", (getter)tree_get_depth, NULL, "levels above the leaves", NULL},
    {"leaf_count", (getter)tree_get_leaf_count, NULL, "real leaves (customers)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TreeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sluice.por._merkle.Tree",
    .tp_basicsize = sizeof(TreeObject),
    .tp_dealloc = (destructor)tree_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A built Merkle-sum tree (made by build()).",
    .tp_methods = tree_methods,
    .tp_getset = tree_getset,
};

/* ---------------------------------------------------------------- verification */

static PyObject *merkle_compute_root(PyObject *module, PyObject *args) {
    const char *snapshot, *instrument, *customer;
    Py_ssize_t snapshot_size, instrument_size, customer_size;
    Py_buffer nonce;
    PyObject *units_object, *index_object, *siblings_object;
    if (!PyArg_ParseTuple(args, "s#s#s#y*OOO:compute_root", &snapshot, &snapshot_size,
                          &instrument, &instrument_size, &customer, &customer_size, &nonce,
                          &units_object, &index_object, &siblings_object)) {
        return NULL;
    }
    PyObject *siblings = NULL;
    if (nonce.len != HASH_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the nonce is not 32 bytes");
        goto fail;
    }
    u128 sum;
    int status = read_units(units_object, &sum);
    if (status != UNITS_OK) {
        raise_units_error(status, units_object, PyUnicode_FromString("the proof's balance"));
        goto fail;
    }
    siblings = PySequence_Fast(siblings_object, "siblings must be a sequence");
    if (siblings == NULL) goto fail;
    Py_ssize_t depth = PySequence_Fast_GET_SIZE(siblings);
    if (depth > 63) {
        PyErr_SetString(PyExc_ValueError, "more than 63 siblings");
        goto fail;
    }
    if (!PyLong_Check(index_object)) {
        PyErr_SetString(PyExc_TypeError, "the index must be an int");
        goto fail;
    }
    int overflow = 0;
    long long index = PyLong_AsLongLongAndOverflow(index_object, &overflow);
    if (index == -1 && PyErr_Occurred()) goto fail;
    if (overflow != 0 || index < 0 || (unsigned long long)index >> depth != 0) {
        PyErr_Format(PyExc_ValueError, "the index %S is not below 2^%zd", index_object, depth);
        goto fail;
    }
    uint8_t hash[HASH_SIZE], label[HASH_SIZE], uid[HASH_SIZE];
    compute_uid(uid, nonce.buf, customer, (size_t)customer_size);
    hash_label(label, snapshot, (size_t)snapshot_size, instrument, (size_t)instrument_size);
    compute_leaf(hash, label, uid, sum);
    PyObject **items = PySequence_Fast_ITEMS(siblings);
    for (Py_ssize_t j = 0; j < depth; j++) {
        PyObject *pair = items[j];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_TypeError, "sibling %zd is not a (hash, units) pair", j);
            goto fail;
        }
        PyObject *sibling_hash = PyTuple_GET_ITEM(pair, 0);
        if (!PyBytes_Check(sibling_hash) || PyBytes_GET_SIZE(sibling_hash) != HASH_SIZE) {
            PyErr_Format(PyExc_ValueError, "sibling %zd: the hash is not 32 bytes", j);
            goto fail;
        }
        u128 sibling_sum;
        PyObject *sibling_units = PyTuple_GET_ITEM(pair, 1);
        status = read_units(sibling_units, &sibling_sum);
        if (status != UNITS_OK) {
            raise_units_error(status, sibling_units, PyUnicode_FromFormat("sibling %zd", j));
            goto fail;
        }
        const uint8_t *other = (const uint8_t *)PyBytes_AS_STRING(sibling_hash);
        uint8_t parent[HASH_SIZE];
        if ((index >> j) & 1) {
            hash_node(parent, other, sibling_sum, hash, sum);
        } else {
            hash_node(parent, hash, sum, other, sibling_sum);
        }
        memcpy(hash, parent, HASH_SIZE);
        sum += sibling_sum;
        if (sum >= SUM_LIMIT) {
            PyErr_Format(PyExc_ValueError, "the sum at level %zd is not below 2^127", j + 1);
            goto fail;
        }
    }
    Py_DECREF(siblings);
    PyBuffer_Release(&nonce);
    return Py_BuildValue("(y#N)", (const char *)hash, (Py_ssize_t)HASH_SIZE, units_to_int(sum));
fail:
    Py_XDECREF(siblings);
    PyBuffer_Release(&nonce);
    return NULL;
}

static PyMethodDef merkle_methods[] = {
    {"build", merkle_build, METH_VARARGS,
     "build(secret, snapshot_id, instrument, customer_ids, units) -> Tree"},
    {"compute_root", merkle_compute_root, METH_VARARGS,
     "compute_root(snapshot_id, instrument, customer_id, nonce, units, index, siblings)"
     " -> (root_hash, total_units); ValueError with the reason when the path is malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef merkle_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sluice.por._merkle",
    .m_doc = "The proof-of-liabilities Merkle-sum tree in C (see sluice.por.tree).",
    .m_size = -1,
    .m_methods = merkle_methods,
};

PyMODINIT_FUNC PyInit__merkle(void) {
    if (PyType_Ready(&TreeType) < 0) return NULL;
    return PyModule_Create(&merkle_module);
}
