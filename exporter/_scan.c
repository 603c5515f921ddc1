/* Optional accelerator of the fast path (exporter/scan.py, used by exporter/state/feed.py).
 *
 * scan(text, pos, end, fwd, bwd, udata, udiff[, insert]) -> (stop, nfwd, nbwd, nupd)
 *
 * Reads the glog-prefixed lines of `text` from `pos` (a line start) and stores every plain per-layer value
 * line into the dicts, as floats, exactly as the Python loop over scan.SCAN_GLOG does:
 *
 *   ...]  [Forward] Layer KEY data: NUM      fwd[KEY] = NUM
 *   ...]  [Backward] Layer KEY diff: NUM     bwd[KEY] = NUM
 *   ...]  [Update] Layer KEY data: NUM; diff: NUM2   udata[KEY] = NUM, udiff[KEY] = NUM2
 *
 * (NUM = parse.PLAIN_NUMBER, \d+(\.\d+)?(e[-+]\d+)?, stored as float(NUM); KEY = the longest text before the last " data: "/" diff: ", the message
 * found after the first "]" followed by spaces). It returns at the first line that is anything else,
 * `stop` being its start (or `end`), and the Python code gives that line to the regex path, so the C code
 * never has to know any other line shape. Only 1-byte (Latin-1/ASCII) strings are scanned; for others it
 * returns at once with nothing done. tests/test_scan_accel.py checks it against the pure-Python path.
 *
 * With insert = 0 it only updates keys already in the dicts and stops at a line with a new key: the run
 * state admits new series in Python (limits, name length, layer filter), the C code keeps the hot loop of
 * a net whose series are all known.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')

/* s[0:n] is exactly \d+(\.\d+)?(e[-+]\d+)? */
static int
is_num(const Py_UCS1 *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    if (n <= 0 || !IS_DIGIT(s[0]))
        return 0;
    while (i < n && IS_DIGIT(s[i]))
        i++;
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !IS_DIGIT(s[i]))
            return 0;
        while (i < n && IS_DIGIT(s[i]))
            i++;
    }
    if (i < n && s[i] == 'e') {
        i++;
        if (i >= n || (s[i] != '-' && s[i] != '+'))
            return 0;
        i++;
        if (i >= n || !IS_DIGIT(s[i]))
            return 0;
        while (i < n && IS_DIGIT(s[i]))
            i++;
    }
    return i == n;
}

/* Last occurrence of needle[0:k] in s[a:b], or -1. */
static Py_ssize_t
rfind(const Py_UCS1 *s, Py_ssize_t a, Py_ssize_t b, const char *needle, Py_ssize_t k)
{
    for (Py_ssize_t i = b - k; i >= a; i--)
        if (s[i] == (Py_UCS1)needle[0] && memcmp(s + i, needle, (size_t)k) == 0)
            return i;
    return -1;
}

static int
starts(const Py_UCS1 *s, Py_ssize_t i, Py_ssize_t e, const char *lit, Py_ssize_t k)
{
    return e - i >= k && memcmp(s + i, lit, (size_t)k) == 0;
}

/* Exact powers of ten: every one up to 1e22 is a double. */
static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                               1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define MAX_EXACT (1ULL << 53)

/* s[0:n], a PLAIN_NUMBER, as a double when that takes one IEEE operation on exact operands (Clinger's fast
 * path: digits < 2^53 and a power of ten up to 1e22, so the one rounding is the correct one, the same
 * double float() gives); 0 if the number needs the general conversion. Caffe's 6 significant digits
 * always fit. */
static int
exact_double(const Py_UCS1 *s, Py_ssize_t n, double *out)
{
    unsigned long long mant = 0;
    int exp10 = 0;
    Py_ssize_t i = 0;
    for (; i < n && IS_DIGIT(s[i]); i++)
        if ((mant = mant * 10 + (unsigned)(s[i] - '0')) > MAX_EXACT)
            return 0;
    if (i < n && s[i] == '.')
        for (i++; i < n && IS_DIGIT(s[i]); i++, exp10--)
            if ((mant = mant * 10 + (unsigned)(s[i] - '0')) > MAX_EXACT)
                return 0;
    if (i < n && s[i] == 'e') {
        int sign = s[i + 1] == '-' ? -1 : 1, e = 0;
        for (i += 2; i < n && IS_DIGIT(s[i]); i++)
            if ((e = e * 10 + (s[i] - '0')) > 400)
                return 0;
        exp10 += sign * e;
    }
    if (exp10 < -22 || exp10 > 22)
        return 0;
    *out = exp10 < 0 ? (double)mant / POW10[-exp10] : (double)mant * POW10[exp10];
    return 1;
}

/* The float of s[va:vb], already checked to be PLAIN_NUMBER, exactly as float() reads it: the exact fast
 * path, else Python's own (correctly rounded) conversion of the substring. */
static PyObject *
number(PyObject *text, Py_ssize_t va, Py_ssize_t vb)
{
    double v;
    if (exact_double(PyUnicode_1BYTE_DATA(text) + va, vb - va, &v))
        return PyFloat_FromDouble(v);
    PyObject *sub = PyUnicode_Substring(text, va, vb);
    if (sub == NULL)
        return NULL;
    PyObject *f = PyFloat_FromString(sub);
    Py_DECREF(sub);
    return f;
}

/* 1 stored, 0 not stored (a new key while inserting is off), -1 Python error */
static int
store(PyObject *dict, PyObject *text, Py_ssize_t ka, Py_ssize_t kb, Py_ssize_t va, Py_ssize_t vb, int insert)
{
    PyObject *key = PyUnicode_Substring(text, ka, kb);
    if (key == NULL)
        return -1;
    if (!insert) {
        int known = PyDict_Contains(dict, key);
        if (known <= 0) {
            Py_DECREF(key);
            return known;
        }
    }
    PyObject *value = number(text, va, vb);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc < 0 ? -1 : 1;
}

/* Whether key s[ka:kb] is in dict (always 1 while inserting); -1 on a Python error. */
static int
known(PyObject *dict, PyObject *text, Py_ssize_t ka, Py_ssize_t kb, int insert)
{
    if (insert)
        return 1;
    PyObject *key = PyUnicode_Substring(text, ka, kb);
    if (key == NULL)
        return -1;
    int rc = PyDict_Contains(dict, key);
    Py_DECREF(key);
    return rc;
}

enum { NOT_FAST = 0, FORWARD = 1, BACKWARD = 2, UPDATE = 3 };

/* Classify the line s[a:e] and store it; returns its kind, or -1 on a Python error. */
static int
one_line(PyObject *text, const Py_UCS1 *s, Py_ssize_t a, Py_ssize_t e, PyObject *fwd, PyObject *bwd,
         PyObject *udata, PyObject *udiff, int insert)
{
    /* the message: after the first ']' that is followed by a space (the only place SCAN_GLOG can match) */
    Py_ssize_t i = a;
    for (;;) {
        const Py_UCS1 *p = memchr(s + i, ']', (size_t)(e - i));
        if (p == NULL)
            return NOT_FAST;
        i = p - s + 1;
        if (i < e && s[i] == ' ')
            break;
    }
    while (i < e && s[i] == ' ')
        i++;
    if (starts(s, i, e, "[Forward] Layer ", 16)) {
        Py_ssize_t k = i + 16, m = rfind(s, k, e, " data: ", 7);
        if (m <= k || !is_num(s + m + 7, e - m - 7))
            return NOT_FAST;
        int rc = store(fwd, text, k, m, m + 7, e, insert);
        return rc < 0 ? -1 : (rc ? FORWARD : NOT_FAST);
    }
    if (starts(s, i, e, "[Backward] Layer ", 17)) {
        Py_ssize_t k = i + 17, m = rfind(s, k, e, " diff: ", 7);
        if (m <= k || !is_num(s + m + 7, e - m - 7))
            return NOT_FAST;
        int rc = store(bwd, text, k, m, m + 7, e, insert);
        return rc < 0 ? -1 : (rc ? BACKWARD : NOT_FAST);
    }
    if (starts(s, i, e, "[Update] Layer ", 15)) {
        Py_ssize_t k = i + 15, m = rfind(s, k, e, " data: ", 7);
        if (m <= k)
            return NOT_FAST;
        Py_ssize_t d = rfind(s, m + 7, e, "; diff: ", 8);
        if (d < 0 || !is_num(s + m + 7, d - m - 7) || !is_num(s + d + 8, e - d - 8))
            return NOT_FAST;
        /* both keys known before either is stored: a line is applied whole or left to Python */
        int ka = known(udata, text, k, m, insert), kd = ka > 0 ? known(udiff, text, k, m, insert) : ka;
        if (ka < 0 || kd < 0)
            return -1;
        if (!ka || !kd)
            return NOT_FAST;
        if (store(udata, text, k, m, m + 7, d, 1) < 0 || store(udiff, text, k, m, d + 8, e, 1) < 0)
            return -1;
        return UPDATE;
    }
    return NOT_FAST;
}

static PyObject *
scan(PyObject *self, PyObject *args)
{
    PyObject *text, *fwd, *bwd, *udata, *udiff;
    Py_ssize_t pos, end;
    int insert = 1;
    if (!PyArg_ParseTuple(args, "UnnO!O!O!O!|p", &text, &pos, &end, &PyDict_Type, &fwd, &PyDict_Type, &bwd,
                          &PyDict_Type, &udata, &PyDict_Type, &udiff, &insert))
        return NULL;
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    if (pos < 0 || end > len || pos > end) {
        PyErr_SetString(PyExc_ValueError, "scan: pos/end out of range");
        return NULL;
    }
    Py_ssize_t counts[4] = {0, 0, 0, 0};
    if (PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND)
        return Py_BuildValue("nnnn", pos, (Py_ssize_t)0, (Py_ssize_t)0, (Py_ssize_t)0);
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t a = pos;
    while (a < end) {
        const Py_UCS1 *nl = memchr(s + a, '\n', (size_t)(end - a));
        Py_ssize_t e = nl == NULL ? end : nl - s;
        int kind = one_line(text, s, a, e, fwd, bwd, udata, udiff, insert);
        if (kind < 0)
            return NULL;
        if (kind == NOT_FAST)
            break;
        counts[kind]++;
        a = nl == NULL ? end : e + 1;
    }
    return Py_BuildValue("nnnn", a, counts[FORWARD], counts[BACKWARD], counts[UPDATE]);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(text, pos, end, fwd, bwd, udata, udiff[, insert]) -> (stop, nfwd, nbwd, nupd): store plain "
     "per-layer value lines (as floats) from pos on; stop at the first other line (and, insert false, at a new key)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "exporter._scan", "Optional C accelerator of exporter/scan.py's fast path.", -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
