/*
 * ocspd.audit._chain: the HMAC-SHA256 chain of request audit records, in C.
 *
 * The responder records every OCSP request (RS3.1) as a tuple on its hot path; every flush
 * interval the tuples are encoded and chained (AA7.1: each record's MAC covers the record
 * and the MAC before it). In Python that chaining cost ~4 us a record, a sixth of a cached
 * response; here it is about half a microsecond, with OpenSSL's SHA-256 (SHA-NI where the
 * CPU has it). The output is byte for byte that of ocspd.audit.requests.chain_records_py,
 * the pure-Python fallback, and tests hold the two to it.
 *
 * chain(key, head, seq, records) -> (packed, last_mac)
 *   key      the stream key (bytes)
 *   head     the MAC of the record before the first (32 octets)
 *   seq      the seq of the record before the first
 *   records  a list of (at_us: int, nonce: bool, addresses: bytes, method_outcome: bytes,
 *            answer: bytes)
 *   packed   a segment in storage format 3: 0x03; u32 count of parts, each a u32 length
 *            and the octets of a distinct field value; then per record at_us (i64),
 *            nonce (1 octet), the part numbers of its three fields (u32 each) and its MAC.
 *            Requests repeat their fields (a connection's addresses, a cached response's
 *            answer), so a record stores 53 octets instead of some 250.
 *   Each MAC is HMAC-SHA256(key, previous MAC || encoded record), the record encoded as
 *   ocspd.audit.requests.encode does (version 2, seq, at_us, nonce, then its fields).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <string.h>

#define MAC_BYTES 32
#define BLOCK 64
#define HEAD_BYTES 18 /* version (1), seq (8), at_us (8), nonce (1) */
#define RECORD_VERSION 2
#define SEGMENT_FORMAT 3
/* A stored record: at_us (8), nonce (1), three part numbers (4 each), MAC. */
#define STORED_BYTES (8 + 1 + 12 + MAC_BYTES)

/* OpenSSL's SHA256_* calls are deprecated in 3.0 in favour of EVP, but an EVP_MD_CTX copy
 * allocates (two per record), which made the chain three times slower; these states are
 * plain structs, copied by assignment. */
typedef struct {
    SHA256_CTX inner; /* SHA-256 state after the block key xor ipad */
    SHA256_CTX outer; /* ... after the block key xor opad */
} Hmac;

/* RFC 2104 with the keyed inner and outer states computed once per call. */
static int hmac_init(Hmac *h, const unsigned char *key, size_t key_len) {
    unsigned char block[BLOCK] = {0}, pad[BLOCK];
    if (key_len > BLOCK) {
        if (!SHA256(key, key_len, block)) return 0;
    } else {
        memcpy(block, key, key_len);
    }
    for (int i = 0; i < BLOCK; i++) pad[i] = block[i] ^ 0x36;
    if (!SHA256_Init(&h->inner) || !SHA256_Update(&h->inner, pad, BLOCK)) return 0;
    for (int i = 0; i < BLOCK; i++) pad[i] = block[i] ^ 0x5c;
    if (!SHA256_Init(&h->outer) || !SHA256_Update(&h->outer, pad, BLOCK)) return 0;
    return 1;
}

static void put_u64(unsigned char *p, unsigned long long v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

static void put_u32(unsigned char *p, unsigned long v) {
    for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

static unsigned long get_u32(const unsigned char *p) {
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8)
        | p[3];
}

typedef struct {
    const unsigned char *at;
    size_t len;
} Part;

static PyObject *chain(PyObject *module, PyObject *args) {
    Py_buffer key, head;
    long long seq;
    PyObject *records;
    if (!PyArg_ParseTuple(args, "y*y*LO!:chain", &key, &head, &seq, &PyList_Type, &records))
        return NULL;
    PyObject *result = NULL, *packed = NULL, *index = NULL, *parts = NULL;
    Part *where = NULL;
    Py_ssize_t count = PyList_GET_SIZE(records), size = 1 + 4;
    if (head.len != MAC_BYTES) {
        PyErr_SetString(PyExc_ValueError, "head must be 32 octets");
        goto done;
    }
    /* Pass 1: check every record; number each distinct field value (part) once. */
    index = PyDict_New();
    parts = PyList_New(0);
    if (index == NULL || parts == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 5) {
            PyErr_SetString(PyExc_TypeError, "a record is a 5-tuple");
            goto done;
        }
        for (int f = 2; f < 5; f++) {
            PyObject *value = PyTuple_GET_ITEM(r, f);
            if (!PyBytes_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "record fields must be bytes");
                goto done;
            }
            PyObject *known = PyDict_GetItemWithError(index, value);
            if (known == NULL) {
                if (PyErr_Occurred()) goto done;
                PyObject *number = PyLong_FromSsize_t(PyList_GET_SIZE(parts));
                int failed = number == NULL || PyDict_SetItem(index, value, number) < 0
                    || PyList_Append(parts, value) < 0;
                Py_XDECREF(number);
                if (failed) goto done;
                size += 4 + PyBytes_GET_SIZE(value);
            }
        }
        size += STORED_BYTES;
    }
    Py_ssize_t n_parts = PyList_GET_SIZE(parts);
    packed = PyBytes_FromStringAndSize(NULL, size);
    where = PyMem_Malloc(sizeof(Part) * (n_parts ? n_parts : 1));
    if (packed == NULL || where == NULL) goto done;
    /* Pass 2: the parts table, then each record with its MAC left blank. */
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(packed);
    unsigned char *p = out;
    *p++ = SEGMENT_FORMAT;
    put_u32(p, (unsigned long)n_parts);
    p += 4;
    for (Py_ssize_t i = 0; i < n_parts; i++) {
        PyObject *value = PyList_GET_ITEM(parts, i);
        put_u32(p, (unsigned long)PyBytes_GET_SIZE(value));
        p += 4;
        memcpy(p, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        where[i].at = p;
        where[i].len = (size_t)PyBytes_GET_SIZE(value);
        p += PyBytes_GET_SIZE(value);
    }
    unsigned char *first_record = p;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        long long at_us = PyLong_AsLongLong(PyTuple_GET_ITEM(r, 0));
        if (at_us == -1 && PyErr_Occurred()) goto done;
        int nonce = PyObject_IsTrue(PyTuple_GET_ITEM(r, 1));
        if (nonce < 0) goto done;
        put_u64(p, (unsigned long long)at_us);
        p += 8;
        *p++ = (unsigned char)nonce;
        for (int f = 2; f < 5; f++) {
            PyObject *number = PyDict_GetItemWithError(index, PyTuple_GET_ITEM(r, f));
            if (number == NULL) goto done; /* cannot happen: pass 1 numbered them all */
            put_u32(p, (unsigned long)PyLong_AsSsize_t(number));
            p += 4;
        }
        memset(p, 0, MAC_BYTES);
        p += MAC_BYTES;
    }
    /* Pass 3: the chain, over our own new buffer, so without the GIL. Each MAC covers the
     * record as ocspd.audit.requests.encode writes it: head, then its three parts. */
    unsigned char last[MAC_BYTES];
    memcpy(last, head.buf, MAC_BYTES);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    Hmac h;
    ok = hmac_init(&h, key.buf, (size_t)key.len);
    p = first_record;
    for (Py_ssize_t i = 0; ok && i < count; i++, p += STORED_BYTES) {
        unsigned char encoded_head[HEAD_BYTES], inner[MAC_BYTES];
        encoded_head[0] = RECORD_VERSION;
        put_u64(encoded_head + 1, (unsigned long long)(seq + 1 + i));
        memcpy(encoded_head + 9, p, 9); /* at_us and nonce, as stored */
        SHA256_CTX work = h.inner;
        ok = SHA256_Update(&work, last, MAC_BYTES)
            && SHA256_Update(&work, encoded_head, HEAD_BYTES);
        for (int f = 0; ok && f < 3; f++) {
            const Part *part = &where[get_u32(p + 9 + 4 * f)];
            ok = SHA256_Update(&work, part->at, part->len);
        }
        ok = ok && SHA256_Final(inner, &work);
        work = h.outer;
        ok = ok && SHA256_Update(&work, inner, MAC_BYTES)
            && SHA256_Final(p + STORED_BYTES - MAC_BYTES, &work);
        memcpy(last, p + STORED_BYTES - MAC_BYTES, MAC_BYTES);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        goto done;
    }
    result = Py_BuildValue("(Oy#)", packed, (const char *)last, (Py_ssize_t)MAC_BYTES);
done:
    PyMem_Free(where);
    Py_XDECREF(index);
    Py_XDECREF(parts);
    Py_XDECREF(packed);
    PyBuffer_Release(&key);
    PyBuffer_Release(&head);
    return result;
}

static PyMethodDef methods[] = {
    {"chain", chain, METH_VARARGS,
     "chain(key, head, seq, records) -> (packed, last_mac): encode and HMAC-chain request "
     "audit records (see ocspd.audit.requests.chain_records)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ocspd.audit._chain",
    "HMAC-SHA256 chaining of request audit records, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__chain(void) { return PyModule_Create(&module); }
