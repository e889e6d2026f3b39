/* The protobuf wire on the Generate hot path, both ways.
 *
 * Out: a prompt's token ids as a packed protobuf field, straight from a list of Python ints.
 * protobuf's upb builds a repeated uint32 field from a list at ~50 ns an id (a 2.4k-token prompt:
 * ~125 us, the largest single cost of sending a request); this reads each id in place and writes
 * its varint, ~2 ns an id.
 *
 * In: a streamed GenerateResponse chunk (new ids and counts: the message of every token) read
 * into a tuple, ~0.3 us instead of ~5 us for upb's parse and the attribute reads after it.
 * Anything else (the complete message, logprobs, a field it does not know) is left to protobuf.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int read_id(PyObject *item, uint32_t *out) {
    if (!PyLong_CheckExact(item)) {
        PyErr_SetString(PyExc_TypeError, "token ids must be ints");
        return -1;
    }
    unsigned long value = PyLong_AsUnsignedLong(item);
    if (value == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (value > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "token id does not fit in uint32");
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

static size_t put_varint(uint8_t *at, uint64_t value) {
    size_t n = 0;
    while (value >= 0x80) {
        at[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    at[n++] = (uint8_t)value;
    return n;
}

/* tokenized_field(field, ids) -> bytes: `field` (a TokenizedInput message field) holding
 * TokenizedInput{input_ids (field 2, packed) = ids}, tag and length included. */
static PyObject *tokenized_field(PyObject *self, PyObject *args) {
    int field;
    PyObject *ids;
    if (!PyArg_ParseTuple(args, "iO!", &field, &PyList_Type, &ids)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(ids);
    /* Worst case: 5 bytes an id, plus two tags and two lengths of up to 10 bytes each. */
    size_t cap = (size_t)count * 5 + 32;
    uint8_t *buffer = PyMem_Malloc(cap);
    if (buffer == NULL) {
        return PyErr_NoMemory();
    }
    /* The packed ids go at a fixed offset; the headers are written in front once sizes are
     * known. */
    size_t start = 32, end = start;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t id;
        if (read_id(PyList_GET_ITEM(ids, i), &id) < 0) {
            PyMem_Free(buffer);
            return NULL;
        }
        end += put_varint(buffer + end, id);
    }
    size_t packed = end - start;
    uint8_t inner[16], outer[16];
    size_t inner_n = 0, outer_n = 0;
    if (count > 0) {
        inner[inner_n++] = (2 << 3) | 2; /* input_ids, length-delimited (packed) */
        inner_n += put_varint(inner + inner_n, packed);
    }
    size_t message = inner_n + packed;
    outer_n += put_varint(outer, ((uint64_t)field << 3) | 2);
    outer_n += put_varint(outer + outer_n, message);
    size_t head = outer_n + inner_n;
    uint8_t *at = buffer + start - head;
    memcpy(at, outer, outer_n);
    memcpy(at + outer_n, inner, inner_n);
    PyObject *result = PyBytes_FromStringAndSize((const char *)at, (Py_ssize_t)(head + packed));
    PyMem_Free(buffer);
    return result;
}

static int get_varint(const uint8_t **at, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; *at < end && shift < 64; shift += 7) {
        uint8_t byte = *(*at)++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* A uint32 field's varint; values past 32 bits (which protobuf would truncate) are refused. */
static int get_uint32(const uint8_t **at, const uint8_t *end, uint32_t *out) {
    uint64_t value;
    if (get_varint(at, end, &value) < 0 || value > 0xFFFFFFFFull) {
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

static int get_length(const uint8_t **at, const uint8_t *end, const uint8_t **stop) {
    uint64_t length;
    if (get_varint(at, end, &length) < 0 || length > (uint64_t)(end - *at)) {
        return -1;
    }
    *stop = *at + length;
    return 0;
}

static int append_id(PyObject *ids, uint32_t id) {
    PyObject *item = PyLong_FromUnsignedLong(id);
    if (item == NULL) {
        return -1;
    }
    int status = PyList_Append(ids, item);
    Py_DECREF(item);
    return status;
}

/* Reads GenerateStreamChunk{token_ids = 1, prompt_tokens = 2, completion_tokens = 3,
 * cached_tokens = 4, index = index_field}. 1: read; 0: another field is present (the caller
 * falls back); -1: a Python error is set. */
static int read_chunk(const uint8_t *at, const uint8_t *end, int index_field, PyObject *ids,
                      uint32_t counts[4]) {
    while (at < end) {
        uint64_t tag;
        if (get_varint(&at, end, &tag) < 0) {
            return 0;
        }
        uint64_t field = tag >> 3;
        int wire = (int)(tag & 7);
        uint32_t value;
        if (field == 1 && wire == 2) { /* packed ids */
            const uint8_t *stop;
            if (get_length(&at, end, &stop) < 0) {
                return 0;
            }
            while (at < stop) {
                if (get_uint32(&at, stop, &value) < 0) {
                    return 0;
                }
                if (append_id(ids, value) < 0) {
                    return -1;
                }
            }
        } else if (field == 1 && wire == 0) { /* one id, unpacked */
            if (get_uint32(&at, end, &value) < 0) {
                return 0;
            }
            if (append_id(ids, value) < 0) {
                return -1;
            }
        } else if (wire == 0 && (field >= 2 && field <= 4)) { /* the last value wins */
            if (get_uint32(&at, end, &counts[field - 1]) < 0) {
                return 0;
            }
        } else if (wire == 0 && field == (uint64_t)index_field) {
            if (get_uint32(&at, end, &counts[0]) < 0) {
                return 0;
            }
        } else {
            return 0;
        }
    }
    return 1;
}

/* stream_chunk(data, chunk_field, index_field, skipped_field) -> (index, ids, prompt_tokens,
 * completion_tokens, cached_tokens) | None. `data` is a GenerateResponse; `skipped_field`, a
 * top-level field to ignore (SGLang's request_id; 0: none). None: not a plain streamed chunk. */
static PyObject *stream_chunk(PyObject *self, PyObject *args) {
    Py_buffer view;
    int chunk_field, index_field, skipped_field;
    if (!PyArg_ParseTuple(args, "y*iii", &view, &chunk_field, &index_field, &skipped_field)) {
        return NULL;
    }
    const uint8_t *at = view.buf, *end = at + view.len;
    const uint8_t *chunk = NULL, *chunk_end = NULL;
    int plain = 1;
    while (at < end) {
        uint64_t tag;
        const uint8_t *stop;
        if (get_varint(&at, end, &tag) < 0 || (tag & 7) != 2 || get_length(&at, end, &stop) < 0) {
            plain = 0;
            break;
        }
        if ((tag >> 3) == (uint64_t)chunk_field && chunk == NULL) {
            chunk = at;
            chunk_end = stop;
        } else if (skipped_field == 0 || (tag >> 3) != (uint64_t)skipped_field) {
            plain = 0; /* the complete message, a repeated chunk (merged by protobuf), or more */
            break;
        }
        at = stop;
    }
    PyObject *result = NULL;
    if (!plain || chunk == NULL) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    PyObject *ids = PyList_New(0);
    if (ids != NULL) {
        uint32_t counts[4] = {0, 0, 0, 0}; /* index, prompt, completion, cached */
        int read = read_chunk(chunk, chunk_end, index_field, ids, counts);
        if (read == 1) {
            result = Py_BuildValue("(kOkkk)", (unsigned long)counts[0], ids,
                                   (unsigned long)counts[1], (unsigned long)counts[2],
                                   (unsigned long)counts[3]);
        } else if (read == 0) {
            result = Py_NewRef(Py_None);
        }
        Py_DECREF(ids);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"tokenized_field", tokenized_field, METH_VARARGS,
     "tokenized_field(field, ids) -> bytes: a TokenizedInput field holding the packed ids."},
    {"stream_chunk", stream_chunk, METH_VARARGS,
     "stream_chunk(data, chunk_field, index_field, skipped_field) -> tuple | None: a streamed "
     "GenerateResponse chunk's index, ids and counts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_varint", NULL, -1, methods};

PyMODINIT_FUNC PyInit__varint(void) { return PyModule_Create(&module); }
