/* Shared by the files of pagedkv's CPython extension (python/pagedkv/):
 *   _pagedkv.c  errors, argument helpers, module functions and init
 *   cache.c     the Cache type: sequences, prefix cache, batch append, exports, storage
 *   seq.c       the Sequence type
 *   attn.c      attention (worker pools) and FP8 MLA rows
 *   tiers.c     extra keys, lookup / peek, evict / reset, events, tiers, swap,
 *               asynchronous loads
 *   dlpack.c    the DLPack importer (torch tensors, bfloat16 included)
 *   groups.c    KV groups (1.3): the Groups and GroupSequence types; a group's
 *               cache is a Cache object that borrows it (owner set)
 * Everything here is hidden in the extension (-fvisibility=hidden) except PyInit. */
#ifndef PAGEDKV_PY_H
#define PAGEDKV_PY_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL pagedkv_ARRAY_API
#ifndef PKVPY_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stdint.h>
#include <string.h>

#include "pagedkv.h"

#define NSTATUS 64 /* status codes -1 .. -64 can have their own class */

typedef struct {
    PyObject_HEAD
    pkv_cache *c;
    pkv_config cfg;
    int ts;        /* thread-safe: call with the GIL released */
    PyThread_type_lock lock; /* serializes calls on a cache that is not thread-safe */
    int closed;
    int busy;      /* calls in flight without the GIL */
    int views;     /* live arena views: destruction waits for them */
    int32_t last_mbps; /* the FlashMLA table width of the last export */
    PyObject *weakrefs;
    /* A group's cache (Groups.cache(i)): owner is the Groups object (a strong
     * reference), which owns c and lock; close() does nothing, and neither the
     * cache nor the lock is ever destroyed here. NULL for an ordinary cache. */
    PyObject *owner;
    int32_t group;
} CacheObject;

typedef struct {
    PyObject_HEAD
    CacheObject *cache;
    pkv_seq h;
    uint64_t ns;
    int freed;
    PyObject *group_seq; /* a member of this GroupSequence (kept alive; never freed alone), else NULL */
} SeqObject;

#define PKVPY_MAX_GROUPS 8 /* pkv_groups_create takes 1..8 configs */

/* A Groups object: the same ts / lock / busy / closed fields as CacheObject,
 * so CALL works on it too. The lock is shared with its caches' Cache objects. */
typedef struct {
    PyObject_HEAD
    pkv_groups *g;
    int32_t n;
    int ts;
    PyThread_type_lock lock;
    int closed;
    int busy;
    pkv_config cfg[PKVPY_MAX_GROUPS];
    CacheObject *wrap[PKVPY_MAX_GROUPS]; /* borrowed: each clears its entry when it goes */
    PyObject *weakrefs;
} GroupsObject;

typedef struct {
    PyObject_HEAD
    GroupsObject *groups;
    pkv_seq h;
    uint64_t ns;
    int freed;
} GroupSeqObject;

/* Runs one library call. A thread-safe cache: always without the GIL (the
 * library's lock serializes). Any other cache: under co->lock, which no thread
 * ever waits for while holding the GIL; short calls keep the GIL (releasing it
 * costs more than they do), long ones (is_long) release it. busy counts the
 * calls that may run or wait without the GIL, so close() can refuse them. */
#define CALL_IF(co, st, expr, is_long)                                      \
    do {                                                                    \
        if ((co)->ts || (is_long)) {                                        \
            (co)->busy++;                                                   \
            Py_BEGIN_ALLOW_THREADS                                          \
            if (!(co)->ts) PyThread_acquire_lock((co)->lock, WAIT_LOCK);    \
            (st) = (expr);                                                  \
            if (!(co)->ts) PyThread_release_lock((co)->lock);               \
            Py_END_ALLOW_THREADS                                            \
            (co)->busy--;                                                   \
        } else {                                                            \
            if (!PyThread_acquire_lock((co)->lock, NOWAIT_LOCK)) {          \
                (co)->busy++;                                               \
                Py_BEGIN_ALLOW_THREADS                                      \
                PyThread_acquire_lock((co)->lock, WAIT_LOCK);               \
                Py_END_ALLOW_THREADS                                        \
                (co)->busy--;                                               \
            }                                                               \
            (st) = (expr);                                                  \
            PyThread_release_lock((co)->lock);                              \
        }                                                                   \
    } while (0)
#define CALL(co, st, expr) CALL_IF(co, st, expr, 0)
/* A call is long when it moves this many bytes or items. */
#define LONG_BYTES (64 * 1024)
#define LONG_ITEMS 4096

extern PyTypeObject CacheType, SeqType, ArenaRefType, GroupsType, GroupSeqType;

/* Errors: raise the class registered for a status (pagedkv.errors), return NULL. */
PyObject *raise_status(int st, const char *detail);
PyObject *raise_arg(int st, const char *fmt, ...);
/* A Python int in [0, INT32_MAX] into *out: 0, or -1 with InvalidError
 * "NAME: must be RANGE, got N" (or the conversion's exception) set. */
int count_arg(PyObject *arg, const char *name, const char *range, int32_t *out);
PyObject *cache_raise(CacheObject *co, int st);  /* with the cache's last_error text */
int cache_open(CacheObject *co);                  /* 0 with StateError when closed */
PyObject *seq_new(CacheObject *co, pkv_seq h, uint64_t ns);
pkv_seq *seq_handles(CacheObject *co, PyObject *seqs, pkv_seq *buf, Py_ssize_t cap, Py_ssize_t *n,
                     pkv_seq **heap);
PyArrayObject *as_tokens(PyObject *obj, const char *name);
int buf_ok(PyObject *o, const char *name, size_t bytes, int writable);
PyObject *do_register(CacheObject *co, SeqObject *s);
PyObject *cache_slot_mapping(CacheObject *self, PyObject *seqs);
int config_parse(PyObject *args, PyObject *kw, pkv_config *cfg, int *ts);
PyObject *config_dict(const pkv_config *c);
/* groups.c */
void groups_forget_cache(GroupsObject *go, CacheObject *co); /* a group's Cache object goes */
void groups_views_gone(GroupsObject *go); /* destroys a closed Groups once no arena view lives */
PyObject *mod_set_cache_class(PyObject *mod, PyObject *cls);
/* tiers.c */
int parse_mm(PyObject *mm, pkv_mm_range **out, int32_t *n);
PyObject *cache_lookup(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *cache_peek(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *cache_evict(CacheObject *self, PyObject *arg);
PyObject *cache_reset_prefix(CacheObject *self, PyObject *unused);
PyObject *cache_enable_events(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *cache_drain_events(CacheObject *self, PyObject *unused);
PyObject *cache_add_host_tier(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *cache_add_file_tier(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *cache_tier_stats(CacheObject *self, PyObject *arg);
PyObject *cache_drain_transfers(CacheObject *self, PyObject *unused);
PyObject *cache_drain_transfers_raw(CacheObject *self, PyObject *unused);
PyObject *cache_start_async_loads(CacheObject *self, PyObject *arg);
PyObject *cache_lookup_async(CacheObject *self, PyObject *args, PyObject *kw);
PyObject *seq_set_adapter(SeqObject *self, PyObject *arg);
PyObject *seq_add_mm(SeqObject *self, PyObject *args, PyObject *kw);
PyObject *seq_extra_keys(SeqObject *self, PyObject *unused);
PyObject *seq_swap_out(SeqObject *self, PyObject *unused);
PyObject *seq_swap_in(SeqObject *self, PyObject *unused);
PyObject *seq_get_swapped(SeqObject *self, void *unused);
PyObject *seq_load_poll(SeqObject *self, PyObject *unused);
PyObject *seq_load_wait(SeqObject *self, PyObject *unused);
PyObject *mod_attn(PyObject *mod, PyObject *args);
PyObject *mod_mla656(PyObject *mod, PyObject *args);
PyObject *mod_from_dlpack(PyObject *mod, PyObject *obj);

#endif
