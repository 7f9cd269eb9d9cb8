/*
 * Python ints to and from the C tree's unsigned 128-bit sums, with the range checks of the
 * construction (0 <= units < 2^127). Included once, by _merkle.c, after Python.h.
 */
#ifndef SLUICE_MERKLE_UNITS_H
#define SLUICE_MERKLE_UNITS_H

#include "_merkle_hashing.h"

/* ---------------------------------------------------------------- Python ints <-> u128 */

enum { UNITS_OK = 0, UNITS_FAILED = -1, UNITS_NOT_INT = 1, UNITS_NEGATIVE = 2, UNITS_TOO_LARGE = 3 };

/* Reads a non-negative int below 2^127 into *out. Returns UNITS_OK, UNITS_FAILED with a Python
 * error set, or another status with no error set: the caller names the value only then, since
 * formatting a message for every leaf would cost more than hashing it. */
static int read_units(PyObject *value, u128 *out) {
    /* Exactly int: a subclass could run Python code (its __rshift__) while the caller holds
     * pointers into the input sequences. */
    if (!PyLong_CheckExact(value)) return UNITS_NOT_INT;
    int overflow = 0;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (small == -1 && PyErr_Occurred()) return UNITS_FAILED;
    if (overflow == 0) {
        if (small < 0) return UNITS_NEGATIVE;
        *out = (u128)small;
        return UNITS_OK;
    }
    if (overflow < 0) return UNITS_NEGATIVE;
    PyObject *shift = PyLong_FromLong(64);
    PyObject *high = shift ? PyNumber_Rshift(value, shift) : NULL;
    Py_XDECREF(shift);
    if (high == NULL) return UNITS_FAILED;
    unsigned long long high_bits = PyLong_AsUnsignedLongLong(high);
    Py_DECREF(high);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return UNITS_TOO_LARGE;
    }
    if (high_bits >= (1ULL << 63)) return UNITS_TOO_LARGE;
    PyObject *mask = PyLong_FromUnsignedLongLong(~0ULL);
    PyObject *low = mask ? PyNumber_And(value, mask) : NULL;
    Py_XDECREF(mask);
    if (low == NULL) return UNITS_FAILED;
    unsigned long long low_bits = PyLong_AsUnsignedLongLong(low);
    Py_DECREF(low);
    if (PyErr_Occurred()) return UNITS_FAILED;
    *out = ((u128)high_bits << 64) | (u128)low_bits;
    return UNITS_OK;
}

/* Sets the error for a read_units status other than UNITS_OK; `what` names the value (stolen). */
static void raise_units_error(int status, PyObject *value, PyObject *what) {
    if (what == NULL) return;
    if (status == UNITS_NOT_INT) {
        PyErr_Format(PyExc_TypeError, "%U: units must be an int, not %.100s", what,
                     Py_TYPE(value)->tp_name);
    } else if (status == UNITS_NEGATIVE) {
        PyErr_Format(PyExc_ValueError, "%U: units are negative (%S)", what, value);
    } else if (status == UNITS_TOO_LARGE) {
        PyErr_Format(PyExc_ValueError, "%U: units %S are not below 2^127", what, value);
    }
    Py_DECREF(what);
}

static PyObject *units_to_int(u128 value) {
    if (value <= (u128)~0ULL) return PyLong_FromUnsignedLongLong((unsigned long long)value);
    PyObject *high = PyLong_FromUnsignedLongLong((unsigned long long)(value >> 64));
    PyObject *low = PyLong_FromUnsignedLongLong((unsigned long long)value);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *shifted = (high && shift) ? PyNumber_Lshift(high, shift) : NULL;
    PyObject *result = (shifted && low) ? PyNumber_Or(shifted, low) : NULL;
    Py_XDECREF(high);
    Py_XDECREF(low);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    return result;
}

#endif
