"""The one root of pyctdb's errors: every error pyctdb raises on purpose is a
:class:`PyctdbError` with a ``code`` (an errno name the API and CLI report: EINVAL, ENOENT,
EIO, ...) and a ``message``. Callers map errors by type, never by their text.

Errors of one part (a config file, the API, a control on another node, a database)
derive from it here; the narrower errors of single modules derive from it where they
are defined.
"""

from __future__ import annotations


class PyctdbError(Exception):
    """Root of pyctdb's errors: ``code`` (errno name) and ``message`` (one line)."""

    code = "EIO"

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(PyctdbError):
    """A configuration problem: ``path:line: message``."""

    code = "EINVAL"

    def __init__(self, path=None, line=None, message=""):
        self.path = path
        self.line = line
        self.message = message
        Exception.__init__(self, str(self))

    def __str__(self):
        if self.path is not None and self.line is not None:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message


class ApiError(PyctdbError):
    """An error answered to a local API request: ``code`` and ``message``."""

    def __init__(self, code, message):
        super().__init__(message, code)


class ControlError(PyctdbError):
    """A control on node ``pnn`` failed (the node's answer, or no answer). ``code`` is
    the error code the node answered with (EIO when it gave none), ENOTCONN when the
    node is not connected, ETIMEDOUT when it did not answer in time."""

    def __init__(self, pnn, message, code="EIO"):
        super().__init__(message, code)
        self.pnn = pnn
        Exception.__init__(self, f"node {pnn}: {message}")


class DbError(PyctdbError):
    """A database error for the API: ``code`` (ENOENT, EINVAL, EAGAIN, EBUSY, EIO,
    ENOTCONN)."""

    def __init__(self, code, message):
        super().__init__(message, code)


class FrozenError(PyctdbError, RuntimeError):
    """The databases are frozen (a recovery runs, or a database waits for the recovery
    that follows a failed transaction): try again after it. Code EAGAIN. (Also a
    RuntimeError, as the refusal was before it had a type of its own.)"""

    code = "EAGAIN"


class TransactionInDoubt(PyctdbError):
    """A persistent transaction whose outcome this node could not learn: an attempt of it
    may have been applied (a commit round cut by a node's death, a lost link to the
    coordinator, a control that timed out) and no recovery has decided since, within the
    time the requester waits (docs/databases.md, "Transaction answers"). Not a failure:
    it may be committed. Code EINPROGRESS; ``txid`` is the transaction's id."""

    code = "EINPROGRESS"

    def __init__(self, message="", txid=None):
        super().__init__(message)
        self.txid = txid


class RecordBusy(PyctdbError):
    """A volatile record could not be handed over: a client holds it locked on its
    DMASTER (a migration's contention). Code EBUSY: the migration is tried again."""

    code = "EBUSY"


class RecordMoved(PyctdbError):
    """A migration step asked of the wrong node: this node is no longer the record's
    DMASTER, or no longer the key's LMASTER (the vnn map changed). Code EAGAIN: the
    requester asks again where the record is now."""

    code = "EAGAIN"


class DiskFailure(PyctdbError):
    """A write to a database directory failed for its disk: full (ENOSPC), read-only
    (EROFS) or an I/O error (EIO); ``code`` is that errno name, ``path`` the directory.
    Nothing was written; the node is UNHEALTHY until the directory works again
    (docs/databases.md, "A full or read-only disk")."""

    def __init__(self, message="", code=None, path=None):
        super().__init__(message, code)
        self.path = path


class UsageError(PyctdbError):
    """A command line the tool cannot run (exit code 2 in CTDB's tool: see the CLI)."""

    code = "EINVAL"
