/* fault.h - private to store/: failpoints on the paths that must survive crashes and I/O
 * errors (RELIABILITY 3.2, tests D1/D2; the loops of SQLite's crash and I/O-error tests).
 *
 * Every write, fsync, rename and unlink on the blob install path, and every sqlite3_step
 * of a write transaction, first calls store__fp(op) with a short static name ("write",
 * "fsync", "rename", "unlink", "fsync_dir", "sql"). Operations are numbered from 1 in
 * the order they happen, process-wide. Environment (read once, on first call):
 *   ADAPTERD_FAILPOINT_CRASH=k        the k-th operation calls _exit(137) instead
 *   ADAPTERD_FAILPOINT_EIO=k          the k-th operation fails (store__fp returns true; the
 *                                     caller fails as if the call returned EIO)
 *   ADAPTERD_FAILPOINT_EIO=k+         ... and every operation after it
 *   ADAPTERD_FAILPOINT_LOG=1          print "failpoint N op" to stderr for each operation
 *                                     (how a test learns K, the count of a clean run)
 * With none set, store__fp costs one relaxed atomic increment.
 * Threads: any (the counter is atomic). */
#ifndef STORE_FAULT_H
#define STORE_FAULT_H

#include <stdbool.h>

/* true: inject an I/O error for this operation. */
bool store__fp(const char *op);

#endif
