"""pagedkv's exceptions: one class per library status code, all under Error.

Each carries ``status`` (the library's negative code) and ``detail`` (the
library's text from pkv_cache_last_error, or the argument check that failed).
Where a builtin exception means the same thing, the class derives from it too
(``DTypeError`` is a ``TypeError``, ``ShapeError`` a ``ValueError``, ...), so
callers can catch either.
"""


class Error(Exception):
    """Base of every pagedkv error."""

    status = None

    def __init__(self, message="", status=None, detail=None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.detail = message if detail is None else detail


def _make(name, status, bases, doc):
    cls = type(name, (Error,) + bases, {"__doc__": doc, "status": status})
    cls.__module__ = "pagedkv"
    return cls


NullError = _make("NullError", -1, (ValueError,), "A required argument is missing (PKV_ERR_NULL).")
InvalidError = _make("InvalidError", -2, (ValueError,), "An argument is out of its range (PKV_ERR_INVALID).")
NoMemError = _make("NoMemError", -3, (MemoryError,), "The allocator returned NULL (PKV_ERR_NOMEM).")
CapacityError = _make("CapacityError", -4, (), "Not enough free or evictable blocks (PKV_ERR_CAPACITY).")
BufferTooSmallError = _make("BufferTooSmallError", -5, (ValueError,), "An output buffer is too small (PKV_ERR_BUFFER).")
NoSeqError = _make("NoSeqError", -6, (LookupError,), "Unknown, freed or stale sequence (PKV_ERR_NO_SEQ).")
BlockIdError = _make("BlockIdError", -7, (IndexError,), "A block id outside [0, num_blocks) (PKV_ERR_BLOCK_ID).")
SeqLenError = _make("SeqLenError", -8, (ValueError,), "A bad sequence length (PKV_ERR_SEQLEN).")
HeadsError = _make("HeadsError", -9, (ValueError,), "h_q is not a positive multiple of h_kv (PKV_ERR_HEADS).")
DTypeError = _make("DTypeError", -10, (TypeError,), "A dtype that is unknown or not allowed here (PKV_ERR_DTYPE).")
ModeError = _make("ModeError", -11, (), "Needs host storage or the prefix cache (PKV_ERR_MODE).")
NonFiniteError = _make("NonFiniteError", -12, (ValueError,), "A NaN or infinite input (PKV_ERR_NONFINITE).")
CorruptError = _make("CorruptError", -13, (), "Cache.check() found an inconsistency (PKV_ERR_CORRUPT).")
ThreadError = _make("ThreadError", -14, (), "A thread or lock could not be created (PKV_ERR_THREAD).")
IOFailedError = _make("IOFailedError", -15, (), "A file could not be read or written (PKV_ERR_IO).")
FormatError = _make("FormatError", -16, (ValueError,), "Malformed input data (PKV_ERR_FORMAT).")
StateError = _make("StateError", -17, (), "Not in a state that allows this call, e.g. closed (PKV_ERR_STATE).")
ShapeError = _make("ShapeError", -18, (ValueError,), "Array shapes disagree (PKV_ERR_SHAPE).")
SlotError = _make("SlotError", -19, (IndexError,), "A slot outside the cache (PKV_ERR_SLOT).")
NotFoundError = _make("NotFoundError", -20, (LookupError,), "A tier holds nothing under the key (PKV_ERR_NOT_FOUND).")

BY_STATUS = {0: Error}
for _cls in (NullError, InvalidError, NoMemError, CapacityError, BufferTooSmallError, NoSeqError, BlockIdError,
             SeqLenError, HeadsError, DTypeError, ModeError, NonFiniteError, CorruptError, ThreadError,
             IOFailedError, FormatError, StateError, ShapeError, SlotError, NotFoundError):
    BY_STATUS[_cls.status] = _cls



def _complete(strerror, limit=64):
    """A class for each status the library describes but this module does not name
    (a newer library), so that every status still raises its own subclass."""
    for st in range(-1, -limit, -1):
        if st not in BY_STATUS and strerror(st) != "unknown status":
            BY_STATUS[st] = _make(f"Status{-st}Error", st, (), strerror(st))


__all__ = ["Error"] + [c.__name__ for c in BY_STATUS.values() if c is not Error]
