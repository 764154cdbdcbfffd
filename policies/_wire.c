/* policies._wire: the trace facts every decision reads, from one walk of the encoded bytes.
 *
 * Optional: built when a C compiler is present, and policies.native falls back to the
 * protobuf (upb) parses of policies.flatten without it. Both give the same answers; the walk
 * only saves the Python objects a parse builds (see policies/native.py).
 *
 * The walk reads an ExportTraceServiceRequest down to each span's status, exactly the levels
 * policies.flatten's look-alike types parse (request, ResourceSpans, Resource, ScopeSpans,
 * Span, Status), and checks the wire structure of those levels as the parser does. Whatever
 * is not the common shape (a known field with another wire type, a group, a status code
 * outside the enum, a non-ASCII tracestate, broken bytes) makes it answer None: the caller
 * then parses, and the parser decides what the bytes mean or raises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FNV64_OFFSET 14695981039346656037ULL
#define FNV64_PRIME 1099511628211ULL
#define INT64_LIMIT (1ULL << 63)

typedef struct {
    const uint8_t *data;
    size_t len;
} Slice;

#define INLINE_SLICES 32

typedef struct {
    Slice *items; /* `inline_items` until a trace has more */
    size_t n, cap;
    Slice inline_items[INLINE_SLICES];
} Slices;

typedef struct {
    size_t spans, starts, ends, codes, states;
    uint64_t min_start, max_start, max_end;
    unsigned code_mask;
    PyObject *entries; /* a tuple of encoded KeyValues to look for, or NULL */
    int found;         /* one of them is a resource or span attribute */
    int single;        /* also read the trace IDs and resource attributes (single_trace) */
    size_t trace_ids;  /* trace ID fields seen */
    Slice first_id;
    int mixed;         /* a trace ID differs from the first */
    Slices ids, parents, attributes; /* attributes: the resources', when `single` */
} Facts;

typedef struct {
    uint32_t number, wire;
    uint64_t value;     /* wire types 0, 1, 5 */
    const uint8_t *data; /* wire type 2 */
    size_t len;
} Field;

/* 0, or -1 when the bytes are not the common shape (the caller then parses them). */
typedef int Status;

static Status varint(const uint8_t **at, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *at;
    if (p < end && *p < 0x80) { /* tags and lengths are mostly one byte */
        *out = *p;
        *at = p + 1;
        return 0;
    }
    uint64_t value = 0;
    for (int shift = 0; shift < 70 && p < end; shift += 7) {
        uint8_t byte = *p++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *at = p;
            *out = value;
            return 0;
        }
    }
    return -1;
}

static uint64_t little_endian(const uint8_t *p, int bytes) {
    uint64_t value = 0;
    for (int i = bytes - 1; i >= 0; i--) value = (value << 8) | p[i];
    return value;
}

/* The next field of a message ending at `end`; its value read (or located) and skipped. */
static Status next_field(const uint8_t **at, const uint8_t *end, Field *field) {
    uint64_t tag;
    if (varint(at, end, &tag) || tag > UINT32_MAX) return -1;
    field->number = (uint32_t)(tag >> 3);
    field->wire = (uint32_t)(tag & 7);
    if (field->number == 0) return -1;
    const uint8_t *p = *at;
    size_t left = (size_t)(end - p);
    switch (field->wire) {
    case 0:
        return varint(at, end, &field->value);
    case 1:
        if (left < 8) return -1;
        field->value = little_endian(p, 8);
        *at = p + 8;
        return 0;
    case 5:
        if (left < 4) return -1;
        field->value = little_endian(p, 4);
        *at = p + 4;
        return 0;
    case 2: {
        uint64_t len;
        if (varint(at, end, &len)) return -1;
        p = *at;
        if (len > (uint64_t)(end - p)) return -1;
        field->data = p;
        field->len = (size_t)len;
        *at = p + len;
        return 0;
    }
    default: /* groups and wire types that do not exist */
        return -1;
    }
}

static Status push(Slices *list, const uint8_t *data, size_t len) {
    if (list->n == list->cap) {
        size_t cap = 2 * list->cap;
        Slice *items;
        if (list->items == list->inline_items) {
            items = PyMem_Malloc(cap * sizeof(Slice));
            if (items != NULL) memcpy(items, list->items, list->n * sizeof(Slice));
        } else {
            items = PyMem_Realloc(list->items, cap * sizeof(Slice));
        }
        if (items == NULL) return -1;
        list->items = items;
        list->cap = cap;
    }
    list->items[list->n].data = data;
    list->items[list->n].len = len;
    list->n++;
    return 0;
}

static void match_entry(Facts *facts, const Field *field) {
    if (facts->entries == NULL || facts->found) return;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(facts->entries); i++) {
        PyObject *entry = PyTuple_GET_ITEM(facts->entries, i);
        if ((size_t)PyBytes_GET_SIZE(entry) == field->len &&
            memcmp(PyBytes_AS_STRING(entry), field->data, field->len) == 0) {
            facts->found = 1;
            return;
        }
    }
}

/* A message whose fields are all read as `number: required wire type` (0: any, skipped). */
#define FOR_EACH_FIELD(start, size, field)                                                   \
    for (const uint8_t *at_ = (start), *end_ = (start) + (size); at_ < end_;)                \
        if (next_field(&at_, end_, &(field))) return -1;                                     \
        else

static Status walk_status(const uint8_t *data, size_t len, Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        if (field.number != 3) continue;
        if (field.wire != 0) return -1;
        int32_t code = (int32_t)(uint32_t)field.value; /* int32 keeps the low 32 bits */
        if (code < 0 || code > 2) return -1;
        facts->code_mask |= 1u << code;
        facts->codes++;
    }
    return 0;
}

static Status walk_span(const uint8_t *data, size_t len, Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        switch (field.number) {
        case 1: /* trace_id */
            if (!facts->single) break;
            if (field.wire != 2) return -1;
            if (facts->trace_ids++ == 0) {
                facts->first_id.data = field.data;
                facts->first_id.len = field.len;
            } else if (field.len != facts->first_id.len ||
                       memcmp(field.data, facts->first_id.data, field.len) != 0) {
                facts->mixed = 1;
            }
            break;
        case 2: /* span_id */
            if (field.wire != 2 || push(&facts->ids, field.data, field.len)) return -1;
            break;
        case 3: /* trace_state: a string, which the parser checks for UTF-8 */
            if (field.wire != 2) return -1;
            for (size_t i = 0; i < field.len; i++)
                if (field.data[i] & 0x80) return -1;
            facts->states++;
            break;
        case 4: /* parent_span_id */
            if (field.wire != 2 || push(&facts->parents, field.data, field.len)) return -1;
            break;
        case 7: /* start_time_unix_nano */
            if (field.wire != 1) return -1;
            if (facts->starts == 0 || field.value < facts->min_start)
                facts->min_start = field.value;
            if (field.value > facts->max_start) facts->max_start = field.value;
            facts->starts++;
            break;
        case 8: /* end_time_unix_nano */
            if (field.wire != 1) return -1;
            if (field.value > facts->max_end) facts->max_end = field.value;
            facts->ends++;
            break;
        case 9: /* attributes */
            if (field.wire != 2) return -1;
            match_entry(facts, &field);
            break;
        case 15: /* status */
            if (field.wire != 2 || walk_status(field.data, field.len, facts)) return -1;
            break;
        }
    }
    facts->spans++;
    return 0;
}

typedef Status (*Walker)(const uint8_t *, size_t, Facts *);

/* Each occurrence of the message field `number` walked by `walk`; other fields skipped. */
static Status walk_each(const uint8_t *data, size_t len, uint32_t number, Walker walk,
                        Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        if (field.number != number) continue;
        if (field.wire != 2 || walk(field.data, field.len, facts)) return -1;
    }
    return 0;
}

static Status walk_resource(const uint8_t *data, size_t len, Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        if (field.number != 1) continue;
        if (field.wire != 2) return -1;
        match_entry(facts, &field);
        if (facts->single && push(&facts->attributes, field.data, field.len)) return -1;
    }
    return 0;
}

static Status walk_resource_spans(const uint8_t *data, size_t len, Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        if (field.number == 1) {
            if (field.wire != 2 || walk_resource(field.data, field.len, facts)) return -1;
        } else if (field.number == 2) {
            if (field.wire != 2 || walk_each(field.data, field.len, 2, walk_span, facts))
                return -1;
        }
    }
    return 0;
}

static int compare_slices(const void *a, const void *b) {
    const Slice *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->len ? memcmp(x->data, y->data, x->len) : 0;
}

/* Parents that name no span of the trace (each occurrence counted, as the Python path does). */
static Py_ssize_t orphans(Facts *facts) {
    Slices *ids = &facts->ids, *parents = &facts->parents;
    if (parents->n == 0) return 0;
    if (ids->n > 1) qsort(ids->items, ids->n, sizeof(Slice), compare_slices);
    Py_ssize_t missing = 0;
    for (size_t i = 0; i < parents->n; i++) {
        if (ids->n == 0 ||
            !bsearch(&parents->items[i], ids->items, ids->n, sizeof(Slice), compare_slices))
            missing++;
    }
    return missing;
}

PyDoc_STRVAR(trace_facts_doc,
"trace_facts(request: bytes) -> tuple | None\n\n"
"(span_count, start, end, times_complete, code_mask, code_count, trace_states, has_root,\n"
"orphan_spans) of an encoded ExportTraceServiceRequest, or None when it is not the common\n"
"shape (see policies.native).");

static void start_slices(Slices *list) {
    list->items = list->inline_items;
    list->n = 0;
    list->cap = INLINE_SLICES;
}

static void free_slices(Facts *facts) {
    Slices *lists[] = {&facts->ids, &facts->parents, &facts->attributes};
    for (int i = 0; i < 3; i++)
        if (lists[i]->items != lists[i]->inline_items) PyMem_Free(lists[i]->items);
}

/* Walk `request` into `facts`, looking for `entries` (a tuple of bytes, or NULL): the walk's
 * status (-1 also for a request that is not bytes: the parser reads any bytes-like object),
 * or -2 with a TypeError for entries that are not a tuple of bytes. */
static int walk(PyObject *request, PyObject *entries, int single, Facts *facts) {
    if (entries != NULL) {
        if (!PyTuple_Check(entries)) {
            PyErr_SetString(PyExc_TypeError, "the entries must be a tuple of bytes");
            return -2;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(entries); i++) {
            if (!PyBytes_Check(PyTuple_GET_ITEM(entries, i))) {
                PyErr_SetString(PyExc_TypeError, "the entries must be a tuple of bytes");
                return -2;
            }
        }
    }
    memset(facts, 0, offsetof(Facts, ids));
    facts->entries = entries;
    facts->single = single;
    start_slices(&facts->ids);
    start_slices(&facts->parents);
    start_slices(&facts->attributes);
    if (!PyBytes_Check(request)) return -1;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(request);
    return walk_each(data, (size_t)PyBytes_GET_SIZE(request), 1, walk_resource_spans, facts);
}

static PyObject *trace_facts(PyObject *Py_UNUSED(module), PyObject *arg) {
    Facts facts;
    int walked = walk(arg, NULL, 0, &facts);
    if (walked == -2) return NULL;
    Py_ssize_t missing = walked ? 0 : orphans(&facts);
    free_slices(&facts);
    if (walked) Py_RETURN_NONE;

    uint64_t start = 0, end = facts.ends ? facts.max_end : 0;
    int complete = 0;
    if (facts.spans == 0) {
        complete = 1;
    } else if (facts.starts == facts.spans && facts.ends == facts.spans) {
        start = facts.min_start;
        complete = facts.max_end < INT64_LIMIT && facts.max_start < INT64_LIMIT;
    } else if (facts.starts == facts.spans) {
        start = facts.min_start;
    }
    PyObject *items[9] = {
        PyLong_FromSsize_t((Py_ssize_t)facts.spans),
        PyLong_FromUnsignedLongLong(start),
        PyLong_FromUnsignedLongLong(end),
        PyBool_FromLong(complete),
        PyLong_FromLong((long)facts.code_mask),
        PyLong_FromSsize_t((Py_ssize_t)facts.codes),
        PyLong_FromSsize_t((Py_ssize_t)facts.states),
        PyBool_FromLong(facts.parents.n < facts.spans),
        PyLong_FromSsize_t(missing),
    };
    PyObject *tuple = PyTuple_New(9);
    for (int i = 0; i < 9; i++) {
        if (items[i] == NULL || tuple == NULL) {
            for (int j = i; j < 9; j++) Py_XDECREF(items[j]);
            Py_XDECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    return tuple;
}

PyDoc_STRVAR(fnv1a_64_doc,
"fnv1a_64(data: bytes, seed: int = FNV64_OFFSET) -> int\n\n"
"The 64-bit FNV-1a hash of data, from the running state seed (see policies.hashing).");

static PyObject *fnv1a_64(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "fnv1a_64 takes data and an optional seed");
        return NULL;
    }
    uint64_t hash = FNV64_OFFSET;
    if (nargs == 2) {
        hash = PyLong_AsUnsignedLongLong(args[1]);
        if (hash == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf;
    for (Py_ssize_t i = 0; i < view.len; i++) hash = (hash ^ p[i]) * FNV64_PRIME;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(hash);
}

PyDoc_STRVAR(has_attribute_entry_doc,
"has_attribute_entry(request: bytes, entries: tuple[bytes, ...]) -> bool | None\n\n"
"Whether a resource or span attribute of the encoded ExportTraceServiceRequest is encoded\n"
"exactly as one of entries (encoded KeyValues), or None when the request is not the common\n"
"shape (see trace_facts).");

static PyObject *has_attribute_entry(PyObject *Py_UNUSED(module), PyObject *const *args,
                                     Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "has_attribute_entry takes a request and entries");
        return NULL;
    }
    Facts facts;
    int walked = walk(args[0], args[1], 0, &facts);
    if (walked == -2) return NULL;
    free_slices(&facts);
    if (walked) Py_RETURN_NONE;
    return PyBool_FromLong(facts.found);
}

PyDoc_STRVAR(single_trace_doc,
"single_trace(request: bytes) -> tuple[bytes, int, list[bytes]] | bool | None\n\n"
"(trace_id, span_count, resource_attributes) of an encoded ExportTraceServiceRequest whose\n"
"spans all carry one valid trace ID (16 bytes, not all zero), False when they do not (or\n"
"there are none), None when it is not the common shape (see trace_facts).");

static PyObject *single_trace(PyObject *Py_UNUSED(module), PyObject *arg) {
    Facts facts;
    int walked = walk(arg, NULL, 1, &facts);
    if (walked == -2) return NULL;
    PyObject *result;
    static const uint8_t zero[16];
    if (walked) {
        result = Py_NewRef(Py_None);
    } else if (facts.spans == 0 || facts.trace_ids != facts.spans || facts.mixed ||
               facts.first_id.len != 16 || memcmp(facts.first_id.data, zero, 16) == 0) {
        result = Py_NewRef(Py_False);
    } else {
        PyObject *attributes = PyList_New((Py_ssize_t)facts.attributes.n);
        for (size_t i = 0; attributes != NULL && i < facts.attributes.n; i++) {
            Slice *item = &facts.attributes.items[i];
            PyObject *entry =
                PyBytes_FromStringAndSize((const char *)item->data, (Py_ssize_t)item->len);
            if (entry == NULL) Py_CLEAR(attributes);
            else PyList_SET_ITEM(attributes, (Py_ssize_t)i, entry);
        }
        result = attributes == NULL ? NULL
                                    : Py_BuildValue("(y#nN)", (const char *)facts.first_id.data,
                                                    (Py_ssize_t)16, (Py_ssize_t)facts.spans,
                                                    attributes);
    }
    free_slices(&facts);
    return result;
}

PyDoc_STRVAR(contains_any_doc,
"contains_any(data: bytes-like, needles: tuple[bytes, ...]) -> bool\n\n"
"Whether any of needles occurs in data (memmem: several times faster than a regex\n"
"alternation of literals, which tries every position).");

static PyObject *contains_any(PyObject *Py_UNUSED(module), PyObject *const *args,
                              Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "contains_any takes data and a tuple of bytes");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    int found = 0;
    for (Py_ssize_t i = 0; !found && i < PyTuple_GET_SIZE(args[1]); i++) {
        PyObject *needle = PyTuple_GET_ITEM(args[1], i);
        if (!PyBytes_Check(needle)) {
            PyBuffer_Release(&data);
            PyErr_SetString(PyExc_TypeError, "contains_any takes data and a tuple of bytes");
            return NULL;
        }
        found = memmem(data.buf, (size_t)data.len, PyBytes_AS_STRING(needle),
                       (size_t)PyBytes_GET_SIZE(needle)) != NULL;
    }
    PyBuffer_Release(&data);
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"trace_facts", trace_facts, METH_O, trace_facts_doc},
    {"fnv1a_64", (PyCFunction)(void (*)(void))fnv1a_64, METH_FASTCALL, fnv1a_64_doc},
    {"contains_any", (PyCFunction)(void (*)(void))contains_any, METH_FASTCALL,
     contains_any_doc},
    {"has_attribute_entry", (PyCFunction)(void (*)(void))has_attribute_entry, METH_FASTCALL,
     has_attribute_entry_doc},
    {"single_trace", single_trace, METH_O, single_trace_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "policies._wire", "Trace facts from encoded OTLP in one walk.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module_def); }
