/* streams.pipeline._dropped: the dropped decisions' hash table (streams.pipeline.dropped), in C.
 *
 * Optional: built when a C compiler is present; without it streams.pipeline.dropped uses its
 * Python class, which this type follows step for step (the same slots, probes, ring and
 * eviction order; tests/streams/pipeline/test_decision_memory.py runs both side by side). In
 * Python a probe costs ~1 µs, and a full table evicts one hash per hash added (~4 µs, with the
 * backward shift): once per dropped trace, and one lookup per new trace read.
 *
 * The table holds each 64-bit hash in one slot of a power-of-two array at most half full
 * (linear probing, 0 is the empty slot); the ring holds the same hashes in the order they were
 * added, for first-in first-out eviction.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    uint64_t *table;
    uint64_t *ring;
    uint64_t mask; /* the table's slots, less one (a power of two) */
    long long limit;
    long long inserted; /* hashes ever put in the ring; the next goes to inserted % limit */
    long long evicted;  /* hashes ever taken out of it, oldest first */
} Dropped;

/* The table's slots: none until __init__ allocated them. */
static Py_ssize_t slot_count(Dropped *self) {
    return self->table == NULL ? 0 : (Py_ssize_t)self->mask + 1;
}

/* The ring's slots: `limit`, at least one. */
static Py_ssize_t ring_slots(long long limit) { return limit > 1 ? (Py_ssize_t)limit : 1; }

static int read_hash(PyObject *arg, uint64_t *out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)value;
    return 0;
}

static void discard_hash(Dropped *self, uint64_t hashed) {
    uint64_t *table = self->table, mask = self->mask, at = hashed & mask;
    if (table == NULL) return; /* made without __init__: nothing held */
    for (;;) {
        uint64_t held = table[at];
        if (!held) return;
        if (held == hashed) break;
        at = (at + 1) & mask;
    }
    /* Linear probing: move back every later hash of the run that may sit in the hole. */
    uint64_t hole = at, probe = at;
    for (;;) {
        probe = (probe + 1) & mask;
        uint64_t held = table[probe];
        if (!held) break;
        uint64_t home = held & mask;
        /* `held` may move to the hole if its home is not in (hole, probe], cyclically. */
        if (((probe - home) & mask) >= ((probe - hole) & mask)) {
            table[hole] = held;
            hole = probe;
        }
    }
    table[hole] = 0;
}

static void evict_hashes(Dropped *self, long long count) {
    long long held = self->inserted - self->evicted;
    if (count > held) count = held;
    for (long long i = 0; i < count; i++) {
        discard_hash(self, self->ring[self->evicted % self->limit]);
        self->evicted += 1;
    }
}

static int Dropped_init(Dropped *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"limit", NULL};
    long long limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", names, &limit)) return -1;
    if (limit < 0) limit = 0;
    if (limit > ((long long)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "limit over 2**40");
        return -1;
    }
    long long wanted = 2 * (long long)ring_slots(limit) - 1; /* at least 2 × limit slots, and 16 */
    int bits = 0;
    while (wanted >> bits) bits++;
    if (bits < 4) bits = 4;
    PyMem_Free(self->table);
    PyMem_Free(self->ring);
    self->table = self->ring = NULL;
    self->limit = self->inserted = self->evicted = 0;
    self->mask = ((uint64_t)1 << bits) - 1;
    self->table = PyMem_Calloc((size_t)self->mask + 1, sizeof(uint64_t));
    self->ring = PyMem_Calloc((size_t)ring_slots(limit), sizeof(uint64_t));
    if (self->table == NULL || self->ring == NULL) {
        PyMem_Free(self->table);
        PyMem_Free(self->ring);
        self->table = self->ring = NULL;
        PyErr_NoMemory();
        return -1;
    }
    self->limit = limit;
    return 0;
}

static void Dropped_dealloc(Dropped *self) {
    PyMem_Free(self->table);
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Dropped_add(Dropped *self, PyObject *arg) {
    uint64_t hashed;
    if (read_hash(arg, &hashed) < 0) return NULL;
    if (!self->limit) Py_RETURN_NONE;
    uint64_t *table = self->table, mask = self->mask, at = hashed & mask, held;
    while ((held = table[at])) { /* one probe: the first empty slot is where it goes */
        if (held == hashed) Py_RETURN_NONE;
        at = (at + 1) & mask;
    }
    if (self->inserted - self->evicted >= self->limit) {
        evict_hashes(self, 1); /* may empty a slot nearer home (hashes move back): probe again */
        at = hashed & mask;
        while (table[at]) at = (at + 1) & mask;
    }
    table[at] = hashed;
    self->ring[self->inserted % self->limit] = hashed;
    self->inserted += 1;
    Py_RETURN_NONE;
}

static PyObject *Dropped_discard(Dropped *self, PyObject *arg) {
    uint64_t hashed;
    if (read_hash(arg, &hashed) < 0) return NULL;
    discard_hash(self, hashed);
    Py_RETURN_NONE;
}

static PyObject *Dropped_evict(Dropped *self, PyObject *arg) {
    long long count = PyLong_AsLongLong(arg);
    if (count == -1 && PyErr_Occurred()) return NULL;
    evict_hashes(self, count);
    Py_RETURN_NONE;
}

static int Dropped_contains(Dropped *self, PyObject *arg) {
    uint64_t hashed;
    if (read_hash(arg, &hashed) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear(); /* an int outside 64 bits is no hash this table holds */
        return 0;
    }
    uint64_t *table = self->table, mask = self->mask, at = hashed & mask;
    if (table == NULL) return 0;
    for (;;) {
        uint64_t held = table[at];
        if (held == hashed) return 1;
        if (!held) return 0;
        at = (at + 1) & mask;
    }
}

static Py_ssize_t Dropped_len(Dropped *self) {
    return (Py_ssize_t)(self->inserted - self->evicted);
}

static PyObject *Dropped_nbytes(Dropped *self, void *Py_UNUSED(closure)) {
    Py_ssize_t slots = self->table == NULL ? 0 : slot_count(self) + ring_slots(self->limit);
    return PyLong_FromSsize_t(slots * (Py_ssize_t)sizeof(uint64_t));
}

static PyObject *Dropped_table(Dropped *self, void *Py_UNUSED(closure)) {
    Py_ssize_t slots = slot_count(self);
    PyObject *out = PyList_New(slots);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < slots; i++) {
        PyObject *item = PyLong_FromUnsignedLongLong(self->table[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef Dropped_methods[] = {
    {"add", (PyCFunction)Dropped_add, METH_O,
     "Hold `hashed` (a `key_hash`), evicting the oldest when full; one already held keeps its "
     "place."},
    {"discard", (PyCFunction)Dropped_discard, METH_O,
     "Take `hashed` out of the table (its ring slot stays, and goes with its turn)."},
    {"evict", (PyCFunction)Dropped_evict, METH_O, "Let go of the `count` oldest hashes."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Dropped_members[] = {
    {"limit", T_LONGLONG, offsetof(Dropped, limit), READONLY, "The most hashes held."},
    {"inserted", T_LONGLONG, offsetof(Dropped, inserted), READONLY,
     "Hashes ever put in the ring."},
    {"evicted", T_LONGLONG, offsetof(Dropped, evicted), READONLY,
     "Hashes ever taken out of it, oldest first."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Dropped_getset[] = {
    {"nbytes", (getter)Dropped_nbytes, NULL, "Memory held by the table and the ring.", NULL},
    {"table", (getter)Dropped_table, NULL, "The table's slots (0: empty), as a list.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Dropped_sequence = {
    .sq_length = (lenfunc)Dropped_len,
    .sq_contains = (objobjproc)Dropped_contains,
};

static PyTypeObject DroppedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streams.pipeline._dropped.DroppedSet",
    .tp_doc = "Hashes of trace keys, first in first out, at most `limit` of them.",
    .tp_basicsize = sizeof(Dropped),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dropped_init,
    .tp_dealloc = (destructor)Dropped_dealloc,
    .tp_methods = Dropped_methods,
    .tp_members = Dropped_members,
    .tp_getset = Dropped_getset,
    .tp_as_sequence = &Dropped_sequence,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "streams.pipeline._dropped",
    "The dropped decisions' hash table, in C.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dropped(void) {
    if (PyType_Ready(&DroppedType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    Py_INCREF(&DroppedType);
    if (PyModule_AddObject(module, "DroppedSet", (PyObject *)&DroppedType) < 0) {
        Py_DECREF(&DroppedType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
