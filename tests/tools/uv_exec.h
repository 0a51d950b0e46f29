/* uv_exec.h - the store executor of the bench tools: store tasks on libuv's thread pool
 * (the daemon's own lives in server/server.c). Include once per tool; ctx is the loop.
 * Out of memory or a refused queue ends the tool (exit 1). */
#ifndef TESTS_TOOLS_UV_EXEC_H
#define TESTS_TOOLS_UV_EXEC_H

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "store/store.h"

typedef struct {
    uv_work_t req; /* first: the callbacks get &req */
    store_task_t *task;
} uvx_work_t;

static void uvx_on_work(uv_work_t *req)
{
    ((uvx_work_t *)req)->task->work(((uvx_work_t *)req)->task);
}

static void uvx_on_done(uv_work_t *req, int status)
{
    store_task_t *t = ((uvx_work_t *)req)->task;
    (void)status; /* nothing calls uv_cancel */
    free(req);
    t->done(t);
}

static void uvx_submit(void *ctx, store_task_t *t)
{
    uvx_work_t *w = malloc(sizeof *w);
    if (w)
        w->task = t; /* before queueing: a pool thread may pick it up at once */
    if (!w || uv_queue_work(ctx, &w->req, uvx_on_work, uvx_on_done) != 0) {
        fprintf(stderr, "store executor: cannot queue a task\n");
        exit(1);
    }
}

#endif
