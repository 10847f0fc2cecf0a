/* fileio.c - the Files store's blocking work off the event loop.
 *
 * The directory store's file I/O and the S3 store's requests (files.c's
 * sched__store_*) block: a 500 MB write, or a slow store (up to its 120 s
 * request timeout), would stall every session, stream and request of this
 * scheduler. They run on one worker thread instead, in the order asked;
 * each job ends on the loop (ev_async), where its callback runs. One
 * worker, not a pool: the store's work is rare next to the loop's, and one
 * at a time keeps a burst of uploads from taking every core.
 *
 * Ownership: a job owns what it was given (a PUT's buffer) until its
 * callback; a GET's data is the callback's to free. The worker touches only
 * its job and the configuration (read-only after start).
 */
#define WP_LOG_COMPONENT "files"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "base/err.h"
#include "base/log.h"
#include "scheduler/sched_int.h"

enum fio_op { FIO_PUT, FIO_GET, FIO_DEL };

struct fio_job {
    struct fio_job *next;
    enum fio_op op;
    char id[64];
    char *owned;       /* PUT: the buffer data lies in; freed after the job */
    const void *data;  /* PUT: what to store */
    size_t len;        /* PUT: its length; GET: what was read */
    char *out;         /* GET: what was read (handed to the callback) */
    int rc;
    struct wp_err err;
    sched_fio_cb cb;
    void *ctx;
};

struct sched_fio {
    struct ev_loop *loop;
    const struct sched_config *cfg;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct fio_job *todo, **todo_tail; /* guarded by mu */
    struct fio_job *done, **done_tail; /* guarded by mu */
    bool stop;                         /* guarded by mu */
    int queued;                        /* jobs not yet called back (loop thread) */
    ev_async wake;
};

static void run_job(struct sched_fio *f, struct fio_job *j)
{
    switch (j->op) {
    case FIO_PUT:
        j->rc = sched__store_put(f->cfg, j->id, j->data, j->len, &j->err);
        break;
    case FIO_GET:
        j->rc = sched__store_get(f->cfg, j->id, &j->out, &j->len, &j->err);
        break;
    case FIO_DEL:
        j->rc = sched__store_del(f->cfg, j->id, &j->err);
        break;
    }
}

static void *worker(void *arg)
{
    struct sched_fio *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && !f->todo)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop)
            break; /* what is left is cancelled on the loop */
        struct fio_job *j = f->todo;
        if (!(f->todo = j->next))
            f->todo_tail = &f->todo;
        pthread_mutex_unlock(&f->mu);
        run_job(f, j);
        pthread_mutex_lock(&f->mu);
        j->next = NULL;
        *f->done_tail = j;
        f->done_tail = &j->next;
        ev_async_send(f->loop, &f->wake);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void finish(struct sched_fio *f, struct fio_job *j)
{
    f->queued--;
    free(j->owned);
    j->cb(j->ctx, j->rc, j->rc < 0 ? &j->err : NULL, j->out, j->len);
    free(j);
}

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct sched_fio *f = w->data;
    (void)loop;
    (void)revents;
    pthread_mutex_lock(&f->mu);
    struct fio_job *j = f->done;
    f->done = NULL;
    f->done_tail = &f->done;
    pthread_mutex_unlock(&f->mu);
    while (j) {
        struct fio_job *next = j->next;
        finish(f, j);
        j = next;
    }
}

struct sched_fio *sched__fio_new(struct ev_loop *loop, const struct sched_config *cfg,
                                 struct wp_err *err)
{
    struct sched_fio *f = calloc(1, sizeof(*f));
    if (!f) {
        wp_err_set(err, -ENOMEM, "files worker: out of memory");
        return NULL;
    }
    f->loop = loop;
    f->cfg = cfg;
    f->todo_tail = &f->todo;
    f->done_tail = &f->done;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    ev_async_init(&f->wake, wake_cb);
    f->wake.data = f;
    ev_async_start(loop, &f->wake);
    ev_unref(loop); /* an idle worker keeps no loop alive */
    int rc = pthread_create(&f->th, NULL, worker, f);
    if (rc != 0) {
        ev_ref(loop);
        ev_async_stop(loop, &f->wake);
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->mu);
        free(f);
        wp_err_set(err, -rc, "files worker: %s", strerror(rc));
        return NULL;
    }
    return f;
}

void sched__fio_free(struct sched_fio *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL); /* the job running ends first (bounded by the store's timeouts) */
    wake_cb(f->loop, &f->wake, 0);
    while (f->todo) {
        struct fio_job *j = f->todo;
        f->todo = j->next;
        j->rc = wp_err_set(&j->err, -ECANCELED, "the scheduler is stopping");
        finish(f, j);
    }
    ev_ref(f->loop);
    ev_async_stop(f->loop, &f->wake);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

int sched__fio_queued(const struct sched_fio *f)
{
    return f ? f->queued : 0;
}

static int submit(struct sched_fio *f, enum fio_op op, const char *id, char *owned,
                  const void *data, size_t len, sched_fio_cb cb, void *ctx)
{
    struct fio_job *j = calloc(1, sizeof(*j));
    if (!j || strlen(id) >= sizeof(j->id)) {
        free(j);
        return j ? WP_EINVAL_INPUT : -ENOMEM;
    }
    j->op = op;
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->owned = owned;
    j->data = data;
    j->len = len;
    j->cb = cb;
    j->ctx = ctx;
    f->queued++;
    pthread_mutex_lock(&f->mu);
    *f->todo_tail = j;
    f->todo_tail = &j->next;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

int sched__fio_put(struct sched_fio *f, const char *id, char *owned, const void *data,
                   size_t len, sched_fio_cb cb, void *ctx)
{
    int rc = submit(f, FIO_PUT, id, owned, data, len, cb, ctx);
    if (rc < 0)
        free(owned);
    return rc;
}

int sched__fio_get(struct sched_fio *f, const char *id, sched_fio_cb cb, void *ctx)
{
    return submit(f, FIO_GET, id, NULL, NULL, 0, cb, ctx);
}

int sched__fio_del(struct sched_fio *f, const char *id, sched_fio_cb cb, void *ctx)
{
    return submit(f, FIO_DEL, id, NULL, NULL, 0, cb, ctx);
}
