/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's persistent state (B7): the VM registry with each VM's settings, last commanded
 * target and parking state, the manual reclaim hold (B5.8) and a bounded journal of decisions, in
 * one SQLite database at <dir>/state.db.
 *
 * Durability: WAL with synchronous=NORMAL. A call that returned 0 has written its commit to the
 * WAL (in the kernel's page cache, not fsynced): it survives the death of the process, SIGKILL
 * included, and a restart of ballastd. A power loss or kernel crash can take the commits made
 * since the last checkpoint (one starts after every 4 MiB of WAL and at least every 30 s; the
 * kernel also writes dirty pages back by itself), never the consistency of the database.
 *
 * Threads: one Store per process, and every function below is called from one thread (the
 * daemon's event loop), which never waits for an fsync of the database. Checkpoints, which copy
 * the WAL into the database and fsync both, run on a thread of the Store's own, started by
 * store_open() and joined by store_close(), with its own SQLite connection and every signal
 * blocked (signals stay with the daemon's loop); the two share only a
 * mutex-guarded flag (the loop's commits wake the checkpointer through SQLite's WAL hook) and
 * SQLite's own locking of the files. When a checkpoint has caught up, the checkpointer also makes
 * the commit that starts the WAL again from its beginning (SQLite fsyncs the new WAL header
 * there): a loop commit arriving meanwhile waits for it, polling every 50 us, which costs that one
 * commit about one fsync. Under commits with no pause the WAL may grow; at 16 MiB the
 * checkpointer holds commits back while it catches up. store_close() checkpoints on the calling
 * thread. The store reads no clock: every time is given by the caller, in wall-clock
 * (CLOCK_REALTIME) microseconds, since monotonic time does not survive a restart.
 *
 * Conventions for every function below: the return value is 0 (or the documented non-negative
 * value) on success and a negative errno on failure; ret_* outputs are written only on success;
 * `err` (may be NULL, `errlen` bytes) receives a one-line explanation on failure only, including
 * SQLite's own message when SQLite failed. The errors every call may return besides its own:
 * -EINVAL (a NULL or malformed argument), -ENOMEM, -EBUSY (the database is locked by another
 * process beyond the busy timeout), -EIO/-ENOSPC/-EROFS (the file system), -EBADMSG (the database
 * is corrupt).
 *
 * Sizes and times are uint64_t but SQLite integers are signed 64-bit: any input above
 * STORE_U64_MAX (INT64_MAX) is refused with -ERANGE, never wrapped. Real sizes go up to 2^62.
 *
 * Rows read back are untrusted input (B9): each is validated as strictly as an API request, and a
 * bad row fails the read with -EBADMSG and an `err` naming the row. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION      2          /* PRAGMA user_version this code writes and reads */
#define STORE_APPLICATION_ID      0x626c7374 /* PRAGMA application_id: "blst" */
#define STORE_DB_NAME             "state.db" /* inside the state directory */
#define STORE_U64_MAX             ((uint64_t) INT64_MAX)
#define STORE_VM_ID_MAX           64   /* bytes of [A-Za-z0-9._-] */
#define STORE_DRIVER_MAX          31   /* longest driver name we could ever store */
#define STORE_STRING_MAX          4096 /* bytes of socket, uri, domain */
#define STORE_HOLD_REASON_MAX     256  /* characters (UTF-8 code points) */
#define STORE_HOLD_REASON_BYTES   (4 * STORE_HOLD_REASON_MAX)
#define STORE_WORD_MAX            32                  /* bytes of a journal trigger or state: [a-z0-9_-] */
#define STORE_TARGETS_MAX         ((size_t) 16 << 20) /* bytes of one journal entry's targets JSON */
#define STORE_JOURNAL_MAX_DEFAULT 10000

typedef struct Store Store;

/* One registered VM. Strings are UTF-8; id and driver are inline, the three optional strings are
 * heap-allocated (NULL when absent) and owned by whoever holds the StoreVm: store_vm_done() frees
 * them. A VM is valid (store_vm_is_valid()) when: id is 1–STORE_VM_ID_MAX of [A-Za-z0-9._-];
 * driver is one of qemu, firecracker, cloud-hypervisor, libvirt; libvirt has uri and domain, the
 * others have an absolute socket path; strings are ≤ STORE_STRING_MAX bytes of valid UTF-8;
 * expected_uid is -1 or a uid (0 … 2^32−2); shares ≥ 1; every uint64 ≤ STORE_U64_MAX. */
typedef struct StoreVm {
        char id[STORE_VM_ID_MAX + 1];
        char driver[STORE_DRIVER_MAX + 1];
        char *socket;         /* hypervisor API socket (qemu, firecracker, cloud-hypervisor) */
        char *uri;            /* libvirt connection URI, e.g. qemu:///system */
        char *domain;         /* libvirt domain name or UUID */
        int64_t expected_uid; /* uid the hypervisor process must have (B1.2); -1: any */
        uint64_t assigned;    /* bytes: the VM's full memory */
        uint64_t floor;       /* bytes: configured floor */
        uint32_t shares;
        uint64_t last_target;    /* bytes: the target last commanded; a restart resumes from it */
        bool parked;             /* B4.1 */
        uint64_t park_prev;      /* bytes: the size it had before it was parked */
        uint64_t unparked_until; /* realtime usec: protected from reclaim until then (B4.2); 0: none */
        uint64_t created;        /* realtime usec: when it was registered */
} StoreVm;

/* The manual reclaim hold (B5.8); there is at most one. */
typedef struct StoreHold {
        uint64_t bytes;                           /* keep at least this much reclaimed */
        uint64_t until;                           /* realtime usec: the hold ends then */
        char reason[STORE_HOLD_REASON_BYTES + 1]; /* may be empty */
        uint64_t created;                         /* realtime usec: when it was set */
} StoreHold;

/* One journalled decision. In entries returned by store_journal_list() `targets` and `reasons`
 * are owned by the array (store_journal_free_array() frees them); in the argument of
 * store_journal_append() they are only read. */
typedef struct StoreJournalEntry {
        uint64_t seq;                           /* read: its sequence number (ignored by append) */
        uint64_t time;                          /* realtime usec */
        char trigger[STORE_WORD_MAX + 1];       /* timer | psi | api | driver | start | … */
        char state[STORE_WORD_MAX + 1];         /* healthy | pressure | critical | … */
        uint64_t available, requested, planned; /* bytes */
        char *targets; /* JSON object text {"vm1": N, …}: VM ids to target bytes (integers ≥ 0) */
        /* JSON object text {"vm1": "reclaim", …}: VM ids to why the plan chose their target (words
         * of [a-z0-9_-]); NULL is {}. Entries written before schema version 2 read as {}. */
        char *reasons;
} StoreJournalEntry;

/* Opens (creating it if needed) the store in `dir`: the directory is created with mode 0700 if it
 * does not exist (its parent must), then locked for this process (flock, released on close or
 * death), and <dir>/state.db is opened or created and migrated to STORE_SCHEMA_VERSION inside one
 * transaction. Journal bound: STORE_JOURNAL_MAX_DEFAULT (see store_set_journal_max()).
 * A file that is not a SQLite database, a corrupt database, or a SQLite database of another
 * program is refused with -EBADMSG; a database written by a newer ballastd (user_version above
 * STORE_SCHEMA_VERSION) with -EPROTONOSUPPORT; in both cases `err` names the path and the file is
 * left untouched. -ENOTDIR: dir is not a directory; -EBUSY: another process has this store open;
 * -EOPNOTSUPP: the file system cannot do WAL. The state directory and the files in it
 * (state.db, state.db-wal, state.db-shm) are refused with -ELOOP if they are symbolic links (never
 * followed: a dangling link would have SQLite create the database where it points), with -EPERM
 * if they are not owned by this process's uid or the directory is writable by its group or
 * others; `err` names the path. The files are created 0600 whatever the umask, and an existing
 * file readable by others (0644 before) is made 0600, with a log line. On success *ret is a new
 * Store owned by the caller (store_close()). `dir` is copied. */
int store_open(const char *dir, Store **ret, char *err, size_t errlen);

/* Stops the checkpointer, closes the database (checkpointing the WAL into it and fsyncing, on the
 * calling thread) and frees s. Accepts NULL; returns NULL. Nothing is lost: every successful call
 * was already in the WAL. */
Store *store_close(Store *s);

/* The database file's path, owned by s (valid until store_close()). */
const char *store_path(const Store *s);

/* Keeps at most `max` journal entries from now on, trimming the journal at once if it has more.
 * The bound is not stored: each store_open() starts at STORE_JOURNAL_MAX_DEFAULT. Returns 0;
 * -EINVAL if max is 0; -ERANGE if max > STORE_U64_MAX. */
int store_set_journal_max(Store *s, uint64_t max, char *err, size_t errlen);
/* The journal bound in force. */
uint64_t store_get_journal_max(const Store *s);

/* --- the VM registry --- */

/* Returns true if vm satisfies the rules in StoreVm's comment; on false, and if `err` is given,
 * says which rule failed. Takes no ownership. */
bool store_vm_is_valid(const StoreVm *vm, char *err, size_t errlen);
/* Valid driver names (see StoreVm). */
bool store_driver_is_valid(const char *driver);
/* A valid VM id (see StoreVm). */
bool store_vm_id_is_valid(const char *id);

/* Frees vm's heap strings and sets them to NULL; vm itself is not freed. Accepts NULL. */
void store_vm_done(StoreVm *vm);
/* Frees an array from store_vm_load_all() (its n elements and itself). Accepts NULL; returns NULL. */
StoreVm *store_vm_array_free(StoreVm *vms, size_t n);

/* Registers a VM. vm is only read (copied into the database). Returns 0; -EEXIST if a VM with
 * that id exists; -EINVAL if vm is not valid; -ERANGE if a uint64 field is above STORE_U64_MAX. */
int store_vm_put(Store *s, const StoreVm *vm, char *err, size_t errlen);

/* Replaces every column of the VM vm->id except `created` (which keeps the registration time).
 * Returns 0; -ENOENT if no such VM; -EINVAL / -ERANGE as store_vm_put(). */
int store_vm_update(Store *s, const StoreVm *vm, char *err, size_t errlen);

/* Records the target last commanded to VM id: one indexed UPDATE, cheap enough to call at every
 * command. Returns 0; -ENOENT if no such VM; -ERANGE if target > STORE_U64_MAX. */
int store_vm_set_target(Store *s, const char *id, uint64_t target, char *err, size_t errlen);
/* Records many targets in one transaction (a plan that moves every VM at once). Each is checked as
 * by store_vm_set_target; one that fails that (-ENOENT, -ERANGE, -EINVAL) is skipped and the rest
 * are recorded. Returns 0, the first such error with its message in err (the others recorded), or
 * a database error with nothing recorded. */
typedef struct StoreTarget {
        const char *id;
        uint64_t target;
} StoreTarget;
int store_vm_set_targets(Store *s, const StoreTarget *t, size_t n, char *err, size_t errlen);

/* Records the parking state of VM id (B4): parked, the size before parking, and the end of the
 * post-unpark protection (realtime usec, 0: none). Returns 0; -ENOENT; -ERANGE. */
int store_vm_set_park(Store *s, const char *id, bool parked, uint64_t park_prev, uint64_t unparked_until, char *err,
                      size_t errlen);

/* Forgets VM id. Returns 0; -ENOENT if no such VM. */
int store_vm_delete(Store *s, const char *id, char *err, size_t errlen);

/* Reads VM id into *ret (the caller owns it: store_vm_done()). Returns 0; -ENOENT if no such VM;
 * -EBADMSG if its row is not valid. */
int store_vm_get(Store *s, const char *id, StoreVm *ret, char *err, size_t errlen);

/* Reads every VM, sorted by id, into a new array of *ret_n elements (NULL when 0), owned by the
 * caller: store_vm_array_free(*ret, *ret_n). Returns 0; -EBADMSG (err names the id) if any row is
 * not valid: then nothing is returned, so that a corrupt registry is noticed, not half-loaded. */
int store_vm_load_all(Store *s, StoreVm **ret, size_t *ret_n, char *err, size_t errlen);

/* --- the manual reclaim hold (B5.8) --- */

/* Sets the hold, replacing any previous one. reason may be NULL (empty); it is copied, and must be
 * valid UTF-8 of at most STORE_HOLD_REASON_MAX characters. Times are realtime usec. Returns 0;
 * -EINVAL (reason); -ERANGE (a value > STORE_U64_MAX). */
int store_hold_set(Store *s, uint64_t bytes, uint64_t until, const char *reason, uint64_t created, char *err,
                   size_t errlen);

/* Removes the hold. Returns 1 if there was one, 0 if there was none. The store does not expire
 * holds: the caller compares `until` with the time and clears. */
int store_hold_clear(Store *s, char *err, size_t errlen);

/* Reads the hold into *ret. Returns 0; -ENOENT if there is none; -EBADMSG if its row is not valid. */
int store_hold_get(Store *s, StoreHold *ret, char *err, size_t errlen);

/* --- the decision journal (B7, GET /v1/history) --- */

/* Appends one entry (only read; targets is copied) and drops the oldest beyond the journal bound,
 * in one transaction. trigger and state: 1–STORE_WORD_MAX of [a-z0-9_-]; targets: a JSON object of
 * VM ids to integers in 0 … STORE_U64_MAX, at most STORE_TARGETS_MAX bytes (NULL counts as {}).
 * Returns 0; -EINVAL (a malformed field); -ERANGE (a value > STORE_U64_MAX). */
int store_journal_append(Store *s, const StoreJournalEntry *entry, char *err, size_t errlen);

/* Reads at most `limit` entries, newest (last appended) first, into a new array of *ret_n
 * elements (NULL when 0) owned by the caller: store_journal_free_array(*ret, *ret_n). Returns 0;
 * -EBADMSG if a row is not valid (then nothing is returned). */
int store_journal_list(Store *s, size_t limit, StoreJournalEntry **ret, size_t *ret_n, char *err, size_t errlen);

/* An entry's identity: its sequence number grows with every append and is never reused while
 * the database lives; with its time it names one entry for good (a reader may keep what it made of
 * an entry under this key). */
typedef struct StoreJournalKey {
        uint64_t seq, time;
} StoreJournalKey;

/* The keys of at most `limit` entries, newest first, into ret (room for `limit`). Returns 0. */
int store_journal_keys(Store *s, size_t limit, StoreJournalKey *ret, size_t *ret_n, char *err, size_t errlen);
/* Reads entry `seq` into *ret; ret->targets and ret->reasons are then the caller's to free.
 * Returns 0; -ENOENT (trimmed meanwhile); -EBADMSG (a bad row). */
int store_journal_get(Store *s, uint64_t seq, StoreJournalEntry *ret, char *err, size_t errlen);

/* Frees an array from store_journal_list(). Accepts NULL; returns NULL. */
StoreJournalEntry *store_journal_free_array(StoreJournalEntry *entries, size_t n);
