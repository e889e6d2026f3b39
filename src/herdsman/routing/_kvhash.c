/* The prompt side of kv_hash.py in C: a prompt's block keys straight from its list of token ids.
 *
 * key_i = seed + sum_{j < (i + 1) * block_size} (t_j + 1) * R_j  (mod 2**64), exactly as
 * kv_hash.prompt_keys computes it with numpy. numpy's cost there is mostly turning a list of
 * Python ints into an array (~5 ns a token) and a fixed cost per call; here a token id (a
 * one-digit int) is read in place and the whole prompt is one loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* A token id as uint64; -1 with an exception set when it is not a non-negative int. */
static inline int read_token(PyObject *item, uint64_t *out) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(item) && PyUnstable_Long_IsCompact((PyLongObject *)item)) {
        Py_ssize_t value = PyUnstable_Long_CompactValue((PyLongObject *)item);
        if (value >= 0) {
            *out = (uint64_t)value;
            return 0;
        }
    }
#else
    if (PyLong_CheckExact(item)) {
        Py_ssize_t size = Py_SIZE(item);
        if (size == 1) {
            *out = (uint64_t)((PyLongObject *)item)->ob_digit[0];
            return 0;
        }
        if (size == 0) {
            *out = 0;
            return 0;
        }
    }
#endif
    /* Only exact ints: converting anything else could run Python code that changes the list
     * under us. The caller falls back to numpy on the TypeError. */
    if (!PyLong_CheckExact(item)) {
        PyErr_SetString(PyExc_TypeError, "token ids must be ints");
        return -1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(item);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)value;
    return 0;
}

/* prompt_keys(ids: list | tuple, block_size, n_blocks, seed, multipliers) -> list[int]
 * multipliers: a C-contiguous buffer of uint64 with at least n_blocks * block_size items. */
static PyObject *prompt_keys(PyObject *self, PyObject *args) {
    PyObject *ids;
    Py_ssize_t block_size, n_blocks;
    unsigned long long seed;
    Py_buffer multipliers;
    if (!PyArg_ParseTuple(args, "OnnKy*", &ids, &block_size, &n_blocks, &seed, &multipliers)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (!PyList_CheckExact(ids) && !PyTuple_CheckExact(ids)) {
        PyErr_SetString(PyExc_TypeError, "ids must be a list or a tuple");
        goto done;
    }
    if (block_size <= 0 || n_blocks < 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive, n_blocks not negative");
        goto done;
    }
    Py_ssize_t n = n_blocks * block_size;
    if (n > PySequence_Fast_GET_SIZE(ids) ||
        (size_t)multipliers.len < (size_t)n * sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "too few ids or multipliers for n_blocks");
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(ids);
    const uint64_t *r = (const uint64_t *)multipliers.buf;
    result = PyList_New(n_blocks);
    if (result == NULL) {
        goto done;
    }
    uint64_t sum = 0;
    for (Py_ssize_t b = 0, pos = 0; b < n_blocks; b++) {
        for (Py_ssize_t end = pos + block_size; pos < end; pos++) {
            uint64_t token;
            if (read_token(items[pos], &token) < 0) {
                Py_CLEAR(result);
                goto done;
            }
            sum += (token + 1) * r[pos];
        }
        PyObject *key = PyLong_FromUnsignedLongLong(sum + (uint64_t)seed);
        if (key == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, b, key);
    }
done:
    PyBuffer_Release(&multipliers);
    return result;
}

static PyMethodDef methods[] = {
    {"prompt_keys", prompt_keys, METH_VARARGS,
     "prompt_keys(ids, block_size, n_blocks, seed, multipliers) -> list of block keys"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kvhash", "Block keys of a prompt (see kv_hash.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__kvhash(void) { return PyModule_Create(&module); }
