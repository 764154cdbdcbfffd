/* policies._wire: the trace facts every decision reads, from one walk of the encoded bytes.
 *
 * Optional: built when a C compiler is present; without it policies.trace and policies.flatten
 * fall back to the protobuf (upb) parses. Both give the same answers; the walk only saves the
 * Python objects a parse builds (see policies/trace.py).
 *
 * The walk reads an ExportTraceServiceRequest down to each span's status, exactly the levels
 * policies.flatten's look-alike types parse (request, ResourceSpans, Resource, ScopeSpans,
 * Span, Status), and checks the wire structure of those levels as the parser does. Whatever
 * is not the common shape (a known field with another wire type, a group, a status code
 * outside the enum, a non-ASCII tracestate, broken bytes) makes it answer None: the caller
 * then parses, and the parser decides what the bytes mean or raises.
 *
 * Two more functions serve the streams: check_request reads every byte of a request as the
 * parser does and vouches for it (or answers None), and append_to_spans adds the same encoded
 * fields to every span of a request (the `sampling.*` attributes of a kept trace).
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
    int every;         /* look for each of them (trace_facts), not only for one */
    uint64_t matched;  /* with `every`: bit i, entries[i] is a resource or span attribute */
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

static inline Status varint(const uint8_t **at, const uint8_t *end, uint64_t *out) {
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
static inline Status next_field(const uint8_t **at, const uint8_t *end, Field *field) {
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
    if (facts->entries == NULL || (facts->found && !facts->every)) return;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(facts->entries); i++) {
        PyObject *entry = PyTuple_GET_ITEM(facts->entries, i);
        if ((size_t)PyBytes_GET_SIZE(entry) == field->len &&
            memcmp(PyBytes_AS_STRING(entry), field->data, field->len) == 0) {
            facts->found = 1;
            if (!facts->every) return;
            facts->matched |= 1ULL << i;
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

/* One occurrence of a span's trace_id (single_trace). */
static void note_trace_id(Facts *facts, const uint8_t *data, size_t len) {
    if (facts->trace_ids++ == 0) {
        facts->first_id.data = data;
        facts->first_id.len = len;
    } else if (len != facts->first_id.len || memcmp(data, facts->first_id.data, len) != 0) {
        facts->mixed = 1;
    }
}

static Status walk_span(const uint8_t *data, size_t len, Facts *facts) {
    Field field;
    FOR_EACH_FIELD(data, len, field) {
        switch (field.number) {
        case 1: /* trace_id */
            if (!facts->single) break;
            if (field.wire != 2) return -1;
            note_trace_id(facts, field.data, field.len);
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

/* Whether every slice of `list` is `len` bytes long. */
static int all_of_length(const Slices *list, size_t len) {
    for (size_t i = 0; i < list->n; i++)
        if (list->items[i].len != len) return 0;
    return 1;
}

/* orphans() for a trace of few spans, all IDs 8 bytes (the valid length): compared as words,
 * which beats sorting them (glibc's qsort allocates, and calls back per comparison). */
static Py_ssize_t few_orphans(const Slices *ids, const Slices *parents) {
    uint64_t words[INLINE_SLICES];
    for (size_t i = 0; i < ids->n; i++) memcpy(&words[i], ids->items[i].data, 8);
    Py_ssize_t missing = 0;
    for (size_t i = 0; i < parents->n; i++) {
        uint64_t parent;
        memcpy(&parent, parents->items[i].data, 8);
        size_t j = 0;
        while (j < ids->n && words[j] != parent) j++;
        missing += j == ids->n;
    }
    return missing;
}

/* Parents that name no span of the trace (each occurrence counted, as the Python path does). */
static Py_ssize_t orphans(Facts *facts) {
    Slices *ids = &facts->ids, *parents = &facts->parents;
    if (parents->n == 0) return 0;
    if (ids->n <= INLINE_SLICES && all_of_length(ids, 8) && all_of_length(parents, 8))
        return few_orphans(ids, parents);
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
"trace_facts(request: bytes, entries: tuple[bytes, ...] = ()) -> tuple | None\n\n"
"(span_count, start, end, times_complete, code_mask, code_count, trace_states, has_root,\n"
"orphan_spans, matched) of an encoded ExportTraceServiceRequest, or None when it is not the\n"
"common shape (see policies.trace). matched: bit i is set when entries[i] (an encoded\n"
"KeyValue; at most 64 entries) is a resource or span attribute, as has_attribute_entry\n"
"finds them.");

/* What a walk reads besides the facts (walk's `flags`): the trace IDs and resource attributes
 * (single_trace), and every entry found rather than the first (trace_facts). */
#define SINGLE_TRACE 1
#define EVERY_ENTRY 2

static void start_slices(Slices *list) {
    list->items = list->inline_items;
    list->n = 0;
    list->cap = INLINE_SLICES;
}

static void start_facts(Facts *facts, PyObject *entries, int flags) {
    memset(facts, 0, offsetof(Facts, ids));
    facts->entries = entries;
    facts->single = (flags & SINGLE_TRACE) != 0;
    facts->every = (flags & EVERY_ENTRY) != 0;
    start_slices(&facts->ids);
    start_slices(&facts->parents);
    start_slices(&facts->attributes);
}

static void free_slices(Facts *facts) {
    Slices *lists[] = {&facts->ids, &facts->parents, &facts->attributes};
    for (int i = 0; i < 3; i++)
        if (lists[i]->items != lists[i]->inline_items) PyMem_Free(lists[i]->items);
}

/* Walk `request` into `facts`, looking for `entries` (a tuple of bytes, or NULL), reading what
 * `flags` asks for (SINGLE_TRACE, EVERY_ENTRY): the walk's status (-1 also for a request that
 * is not bytes: the parser reads any bytes-like object), or -2 with a TypeError for entries
 * that are not a tuple of bytes. */
static int walk(PyObject *request, PyObject *entries, int flags, Facts *facts) {
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
    start_facts(facts, entries, flags);
    if (!PyBytes_Check(request)) return -1;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(request);
    return walk_each(data, (size_t)PyBytes_GET_SIZE(request), 1, walk_resource_spans, facts);
}

#define MAX_ENTRIES 64

static PyObject *trace_facts(PyObject *Py_UNUSED(module), PyObject *const *args,
                             Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "trace_facts takes a request and optional entries");
        return NULL;
    }
    PyObject *entries = nargs == 2 ? args[1] : NULL;
    if (entries != NULL && PyTuple_Check(entries) && PyTuple_GET_SIZE(entries) > MAX_ENTRIES) {
        PyErr_SetString(PyExc_ValueError, "trace_facts looks for at most 64 entries");
        return NULL;
    }
    Facts facts;
    int walked = walk(args[0], entries, EVERY_ENTRY, &facts);
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
    PyObject *items[10] = {
        PyLong_FromSsize_t((Py_ssize_t)facts.spans),
        PyLong_FromUnsignedLongLong(start),
        PyLong_FromUnsignedLongLong(end),
        PyBool_FromLong(complete),
        PyLong_FromLong((long)facts.code_mask),
        PyLong_FromSsize_t((Py_ssize_t)facts.codes),
        PyLong_FromSsize_t((Py_ssize_t)facts.states),
        PyBool_FromLong(facts.parents.n < facts.spans),
        PyLong_FromSsize_t(missing),
        PyLong_FromUnsignedLongLong(facts.matched),
    };
    PyObject *tuple = PyTuple_New(10);
    for (int i = 0; i < 10; i++) {
        if (items[i] == NULL || tuple == NULL) {
            for (int j = i; j < 10; j++) Py_XDECREF(items[j]);
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

/* single_trace's answer from the facts of a request read with `single` set; frees them. */
static PyObject *single_answer(Facts *facts) {
    PyObject *result;
    static const uint8_t zero[16];
    if (facts->spans == 0 || facts->trace_ids != facts->spans || facts->mixed ||
        facts->first_id.len != 16 || memcmp(facts->first_id.data, zero, 16) == 0) {
        result = Py_NewRef(Py_False);
    } else {
        PyObject *attributes = PyList_New((Py_ssize_t)facts->attributes.n);
        for (size_t i = 0; attributes != NULL && i < facts->attributes.n; i++) {
            Slice *item = &facts->attributes.items[i];
            PyObject *entry =
                PyBytes_FromStringAndSize((const char *)item->data, (Py_ssize_t)item->len);
            if (entry == NULL) Py_CLEAR(attributes);
            else PyList_SET_ITEM(attributes, (Py_ssize_t)i, entry);
        }
        result = attributes == NULL ? NULL
                                    : Py_BuildValue("(y#nN)", (const char *)facts->first_id.data,
                                                    (Py_ssize_t)16, (Py_ssize_t)facts->spans,
                                                    attributes);
    }
    free_slices(facts);
    return result;
}

static PyObject *single_trace(PyObject *Py_UNUSED(module), PyObject *arg) {
    Facts facts;
    int walked = walk(arg, NULL, SINGLE_TRACE, &facts);
    if (walked == -2) return NULL;
    if (walked) {
        free_slices(&facts);
        Py_RETURN_NONE;
    }
    return single_answer(&facts);
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

/* ---- check_request: every byte of a request read as the parser reads it ----
 *
 * The message types come from the protobuf descriptors (set_schema, called by
 * policies.flatten), so a field the installed opentelemetry-proto knows is checked as the
 * parser checks it: a message field's inside, a string's UTF-8. The answer is one-sided: the
 * span count when the bytes certainly parse, None whenever anything is not the plain shape
 * (a varint not in its shortest form, a known field with another wire type, packed values,
 * a group, nesting deeper than MAX_DEPTH, invalid UTF-8, broken framing): the caller then
 * parses, and the parser decides. */

enum { K_NONE, K_VARINT, K_FIXED64, K_BYTES, K_STRING, K_MESSAGE, K_FIXED32, K_NEVER };
static const uint32_t WIRE_OF_KIND[] = {8, 0, 1, 2, 2, 2, 5, 8}; /* 8: no wire type matches */

#define MAX_DEPTH 32

typedef struct {
    uint8_t kind;
    uint32_t child; /* K_MESSAGE: the message type's index */
} Known;

typedef struct {
    uint32_t max_number;
    Known *fields; /* by field number, 0..max_number */
} MessageType;

static MessageType *types;
static Py_ssize_t type_count;
static Py_ssize_t span_type = -1, resource_type = -1;

/* A varint of at most `max_bytes` bytes, in its shortest form. */
static inline Status strict_varint(const uint8_t **at, const uint8_t *end, int max_bytes,
                                   uint64_t *out) {
    const uint8_t *p = *at;
    if (p < end && *p < 0x80) { /* tags and lengths are mostly one byte, always shortest */
        *out = *p;
        *at = p + 1;
        return 0;
    }
    uint64_t value = 0;
    for (int i = 0; i < max_bytes && p < end; i++) {
        uint8_t byte = *p++;
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80)) {
            if ((i > 0 && byte == 0) || (i == 9 && byte > 1)) return -1;
            *at = p;
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* Well-formed UTF-8 (Unicode's table 3-7: no overlong forms, no surrogates, at most U+10FFFF). */
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* Names, keys and most values are ASCII: eight bytes at a time while they are. */
        while (n - i >= 8) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t more;
        uint8_t low = 0x80, high = 0xBF; /* the range of the byte after the first */
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) low = 0xA0;
            if (c == 0xED) high = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) low = 0x90;
            if (c == 0xF4) high = 0x8F;
        } else {
            return 0;
        }
        if (n - i <= more || s[i + 1] < low || s[i + 1] > high) return 0;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += more + 1;
    }
    return 1;
}

/* Check a message of `type`, counting spans into `facts`; with `facts->single`, also note
 * each span's trace_id and each resource attribute, as the walk does for single_trace. */
static Status check_message(const uint8_t *p, const uint8_t *end, Py_ssize_t type, int depth,
                            Facts *facts) {
    if (depth > MAX_DEPTH) return -1;
    const MessageType *message = &types[type];
    if (type == span_type) facts->spans++;
    while (p < end) {
        uint64_t tag, value;
        if (strict_varint(&p, end, 5, &tag) || tag > UINT32_MAX) return -1;
        uint32_t number = (uint32_t)(tag >> 3), wire = (uint32_t)(tag & 7);
        if (number == 0) return -1;
        const Known *known = number <= message->max_number ? &message->fields[number] : NULL;
        if (known != NULL && known->kind == K_NONE) known = NULL;
        if (known != NULL && WIRE_OF_KIND[known->kind] != wire) return -1;
        switch (wire) {
        case 0:
            if (strict_varint(&p, end, 10, &value)) return -1;
            break;
        case 1:
            if (end - p < 8) return -1;
            p += 8;
            break;
        case 5:
            if (end - p < 4) return -1;
            p += 4;
            break;
        case 2: {
            if (strict_varint(&p, end, 5, &value) || value > INT32_MAX ||
                value > (uint64_t)(end - p))
                return -1;
            const uint8_t *inside = p;
            p += value;
            if (known == NULL) break;
            if (known->kind == K_STRING && !utf8_valid(inside, (size_t)value)) return -1;
            if (known->kind == K_MESSAGE &&
                check_message(inside, p, (Py_ssize_t)known->child, depth + 1, facts))
                return -1;
            if (facts->single && number == 1) {
                if (type == span_type) note_trace_id(facts, inside, (size_t)value);
                else if (type == resource_type && push(&facts->attributes, inside, (size_t)value))
                    return -1;
            }
            break;
        }
        default: /* groups, and wire types that do not exist */
            return -1;
        }
    }
    return 0;
}

static void free_types(void) {
    for (Py_ssize_t i = 0; i < type_count; i++) PyMem_Free(types[i].fields);
    PyMem_Free(types);
    types = NULL;
    type_count = 0;
    span_type = resource_type = -1;
}

PyDoc_STRVAR(set_schema_doc,
"set_schema(types: list[tuple[tuple[int, int, int], ...]], span_type: int,\n"
"           resource_type: int) -> None\n\n"
"The message types check_request reads, the request's first: for each, its fields as\n"
"(number, kind, child type); kinds: 1 varint, 2 fixed64, 3 bytes, 4 string, 5 message,\n"
"6 fixed32, 7 never plain (groups). span_type: the index of Span, whose occurrences are\n"
"counted; resource_type: the index of Resource (see checked_single_trace).");

static PyObject *set_schema(PyObject *Py_UNUSED(module), PyObject *const *args,
                            Py_ssize_t nargs) {
    const char *usage = "set_schema takes a list of tuples of (number, kind, child) and two indexes";
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(args[0]);
    Py_ssize_t span = PyLong_AsSsize_t(args[1]), resource = PyLong_AsSsize_t(args[2]);
    if ((span == -1 || resource == -1) && PyErr_Occurred()) return NULL;
    free_types();
    MessageType *built = PyMem_Calloc((size_t)(count ? count : 1), sizeof(MessageType));
    if (built == NULL) return PyErr_NoMemory();
    types = built;
    type_count = count;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *fields = PyList_GET_ITEM(args[0], i);
        if (!PyTuple_Check(fields)) goto bad;
        uint32_t max_number = 0;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++) {
            unsigned int number, kind, child;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, j), "III", &number, &kind, &child))
                goto fail;
            if (number == 0 || number >= (1u << 29) || kind == K_NONE || kind > K_NEVER ||
                (kind == K_MESSAGE && child >= (unsigned int)count))
                goto bad;
            if (number > max_number) max_number = number;
        }
        if (max_number > 4096) goto bad; /* a lookup table by number: OTLP's are below 20 */
        Known *known = PyMem_Calloc((size_t)max_number + 1, sizeof(Known));
        if (known == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        built[i].fields = known;
        built[i].max_number = max_number;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++) {
            unsigned int number, kind, child;
            PyArg_ParseTuple(PyTuple_GET_ITEM(fields, j), "III", &number, &kind, &child);
            known[number].kind = (uint8_t)kind;
            known[number].child = child;
        }
    }
    if (span < 0 || span >= count || resource < 0 || resource >= count) goto bad;
    span_type = span;
    resource_type = resource;
    Py_RETURN_NONE;
bad:
    PyErr_SetString(PyExc_ValueError, usage);
fail:
    free_types();
    return NULL;
}

PyDoc_STRVAR(check_request_doc,
"check_request(request: bytes) -> int | None\n\n"
"The span count of an encoded message of set_schema's first type when every byte of it\n"
"certainly parses (in C, ~1 µs for 10 spans); None when that cannot be vouched for\n"
"here: the bytes are then to be parsed (see policies.flatten.checked_span_count).");

static PyObject *check_request(PyObject *Py_UNUSED(module), PyObject *arg) {
    if (type_count == 0 || !PyBytes_Check(arg)) Py_RETURN_NONE;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(arg);
    Facts facts;
    start_facts(&facts, NULL, 0);
    Status checked = check_message(data, data + PyBytes_GET_SIZE(arg), 0, 0, &facts);
    free_slices(&facts);
    if (checked) Py_RETURN_NONE;
    return PyLong_FromSize_t(facts.spans);
}

PyDoc_STRVAR(checked_single_trace_doc,
"checked_single_trace(request: bytes) -> tuple[bytes, int, list[bytes]] | bool | None\n\n"
"single_trace's answer (a tuple or False) when, in the same pass, every byte of the request\n"
"was checked as check_request checks it; None when it cannot be vouched for (then ask\n"
"single_trace, and parse the bytes).");

static PyObject *checked_single_trace(PyObject *Py_UNUSED(module), PyObject *arg) {
    if (type_count == 0 || !PyBytes_Check(arg)) Py_RETURN_NONE;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(arg);
    Facts facts;
    start_facts(&facts, NULL, SINGLE_TRACE);
    if (check_message(data, data + PyBytes_GET_SIZE(arg), 0, 0, &facts)) {
        free_slices(&facts);
        Py_RETURN_NONE;
    }
    return single_answer(&facts);
}

/* ---- append_to_spans: the same bytes appended to every span of a request ----
 * Levels: request (field 1) → ResourceSpans (field 2) → ScopeSpans (field 2) → Span. The
 * other fields of each level are copied as they are; a span's encoding is extended, and the
 * lengths of what holds it written again. */

#define SPAN_LEVEL 3

static size_t varint_size(uint64_t value) {
    size_t size = 1;
    for (; value >= 0x80; value >>= 7) size++;
    return size;
}

static uint8_t *put_varint(uint8_t *out, uint64_t value) {
    for (; value >= 0x80; value >>= 7) *out++ = (uint8_t)(value | 0x80);
    *out++ = (uint8_t)value;
    return out;
}

/* The size of a message of `level` once rewritten, or -1 for bytes not of the plain shape. */
static Py_ssize_t rewritten_size(const uint8_t *p, const uint8_t *end, int level,
                                 size_t suffix) {
    if (level == SPAN_LEVEL) return (Py_ssize_t)((size_t)(end - p) + suffix);
    uint32_t nested = level == 0 ? 1 : 2;
    size_t size = 0;
    while (p < end) {
        const uint8_t *start = p;
        Field field = {0};
        if (next_field(&p, end, &field)) return -1;
        if (field.number != nested) {
            size += (size_t)(p - start);
            continue;
        }
        if (field.wire != 2) return -1;
        Py_ssize_t inner = rewritten_size(field.data, field.data + field.len, level + 1, suffix);
        if (inner < 0) return -1;
        size += varint_size(((uint64_t)nested << 3) | 2) + varint_size((uint64_t)inner) +
                (size_t)inner;
    }
    return (Py_ssize_t)size;
}

/* Write a message of `level` rewritten (rewritten_size said it is of the plain shape). */
static uint8_t *rewrite(const uint8_t *p, const uint8_t *end, int level, const uint8_t *suffix,
                        size_t suffix_len, uint8_t *out) {
    if (level == SPAN_LEVEL) {
        memcpy(out, p, (size_t)(end - p));
        memcpy(out + (end - p), suffix, suffix_len);
        return out + (end - p) + suffix_len;
    }
    uint32_t nested = level == 0 ? 1 : 2;
    while (p < end) {
        const uint8_t *start = p;
        Field field = {0};
        next_field(&p, end, &field); /* rewritten_size read it: it succeeds */
        if (field.number != nested) {
            memcpy(out, start, (size_t)(p - start));
            out += p - start;
            continue;
        }
        const uint8_t *inside = field.data, *inside_end = field.data + field.len;
        Py_ssize_t inner = rewritten_size(inside, inside_end, level + 1, suffix_len);
        out = put_varint(out, ((uint64_t)nested << 3) | 2);
        out = put_varint(out, (uint64_t)inner);
        out = rewrite(inside, inside_end, level + 1, suffix, suffix_len, out);
    }
    return out;
}

PyDoc_STRVAR(append_to_spans_doc,
"append_to_spans(request: bytes, suffix: bytes) -> bytes | None\n\n"
"The encoded ExportTraceServiceRequest with suffix (encoded fields) appended to every span,\n"
"everything else as it was; None when the request is not the plain shape (see trace_facts).");

static PyObject *append_to_spans(PyObject *Py_UNUSED(module), PyObject *const *args,
                                 Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "append_to_spans takes a request and bytes");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) Py_RETURN_NONE;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *end = data + PyBytes_GET_SIZE(args[0]);
    const uint8_t *suffix = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    size_t suffix_len = (size_t)PyBytes_GET_SIZE(args[1]);
    Py_ssize_t size = rewritten_size(data, end, 0, suffix_len);
    if (size < 0) Py_RETURN_NONE;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) return NULL;
    rewrite(data, end, 0, suffix, suffix_len, (uint8_t *)PyBytes_AS_STRING(result));
    return result;
}

PyDoc_STRVAR(plain_string_attribute_doc,
"plain_string_attribute(entries: list[bytes], head: bytes) -> str | None | bool\n\n"
"The first non-empty string value among encoded KeyValues whose key field and value tag are\n"
"head (b'\\n', the key's length below 128, the key, b'\\x12'), each read where it is an\n"
"AnyValue holding a string alone of under 126 bytes (as upb writes one); None when there is\n"
"none; False when an entry that holds the key's bytes has another shape (parse those).");

static PyObject *plain_string_attribute(PyObject *Py_UNUSED(module), PyObject *const *args,
                                        Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[1]) < 4) {
        PyErr_SetString(PyExc_TypeError, "plain_string_attribute takes a list and a head");
        return NULL;
    }
    const char *head = PyBytes_AS_STRING(args[1]);
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[1]);
    const char *key = head + 2; /* the key's bytes, between its length and the value's tag */
    Py_ssize_t key_len = head_len - 3;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *item = PyList_GET_ITEM(args[0], i);
        if (!PyBytes_Check(item)) Py_RETURN_FALSE;
        const char *entry = PyBytes_AS_STRING(item);
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        if (len < key_len || memmem(entry, (size_t)len, key, (size_t)key_len) == NULL) continue;
        Py_ssize_t size = len - head_len - 1; /* the AnyValue's length, then its string's */
        if (len <= head_len || memcmp(entry, head, (size_t)head_len) != 0 || size < 2 ||
            size >= 0x80 || (uint8_t)entry[head_len] != size ||
            (uint8_t)entry[head_len + 1] != 0x0A || (uint8_t)entry[head_len + 2] != size - 2)
            Py_RETURN_FALSE;
        if (size == 2) continue; /* an empty string: the next entry may hold one */
        PyObject *value = PyUnicode_DecodeUTF8(entry + head_len + 3, size - 2, NULL);
        if (value == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
        return value;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(split_index_doc,
"split_index(value: bytes, index: bytes) -> list[tuple[bytes, bytes]] | None\n\n"
"A packed record's (trace ID, fragment) pairs: index holds 20 bytes per fragment (the trace\n"
"ID, then the fragment's length, 4 bytes big-endian), the fragments lie back to back in\n"
"value. None when the index is not a whole number of entries or points past value's end.");

static PyObject *split_index(PyObject *Py_UNUSED(module), PyObject *const *args,
                             Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "split_index takes a value and an index (bytes)");
        return NULL;
    }
    const uint8_t *value = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *index = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t value_len = PyBytes_GET_SIZE(args[0]), index_len = PyBytes_GET_SIZE(args[1]);
    if (index_len % 20) Py_RETURN_NONE;
    Py_ssize_t count = index_len / 20, pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* the bounds first: nothing built for a bad one */
        const uint8_t *e = index + 20 * i + 16;
        pos += (Py_ssize_t)(((uint32_t)e[0] << 24) | ((uint32_t)e[1] << 16) |
                            ((uint32_t)e[2] << 8) | (uint32_t)e[3]);
        if (pos > value_len) Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *e = index + 20 * i;
        Py_ssize_t len = (Py_ssize_t)(((uint32_t)e[16] << 24) | ((uint32_t)e[17] << 16) |
                                      ((uint32_t)e[18] << 8) | (uint32_t)e[19]);
        PyObject *pair = Py_BuildValue("(y#y#)", (const char *)e, (Py_ssize_t)16,
                                       (const char *)value + pos, len);
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, pair);
        pos += len;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"trace_facts", (PyCFunction)(void (*)(void))trace_facts, METH_FASTCALL, trace_facts_doc},
    {"fnv1a_64", (PyCFunction)(void (*)(void))fnv1a_64, METH_FASTCALL, fnv1a_64_doc},
    {"contains_any", (PyCFunction)(void (*)(void))contains_any, METH_FASTCALL,
     contains_any_doc},
    {"has_attribute_entry", (PyCFunction)(void (*)(void))has_attribute_entry, METH_FASTCALL,
     has_attribute_entry_doc},
    {"single_trace", single_trace, METH_O, single_trace_doc},
    {"set_schema", (PyCFunction)(void (*)(void))set_schema, METH_FASTCALL, set_schema_doc},
    {"check_request", check_request, METH_O, check_request_doc},
    {"checked_single_trace", checked_single_trace, METH_O, checked_single_trace_doc},
    {"append_to_spans", (PyCFunction)(void (*)(void))append_to_spans, METH_FASTCALL,
     append_to_spans_doc},
    {"split_index", (PyCFunction)(void (*)(void))split_index, METH_FASTCALL, split_index_doc},
    {"plain_string_attribute", (PyCFunction)(void (*)(void))plain_string_attribute,
     METH_FASTCALL, plain_string_attribute_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "policies._wire", "Trace facts from encoded OTLP in one walk.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module_def); }
