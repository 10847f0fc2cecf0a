/* pool.h - the Redis-coordinated warm pool (prefix pool_).
 *
 * This header grows with the node daemon; today it holds the autoscaler's
 * arithmetic, which is pure and loop-free. */
#ifndef POOL_H
#define POOL_H

#include <stdint.h>

/* ---- autoscaler (autoscale.c) ----------------------------------------- */

/* An exponentially weighted moving average of samples (restore times). */
struct pool_ewma {
    double half_life_s;
    double value;
    double last_s;
};
void pool_ewma_init(struct pool_ewma *e, double half_life_s);
void pool_ewma_add(struct pool_ewma *e, double now_s, double sample);

/* An event rate (claims per second), decaying with the given half life. */
struct pool_rate {
    double half_life_s;
    double rate;
    double last_s;
};
void pool_rate_init(struct pool_rate *r, double half_life_s);
void pool_rate_event(struct pool_rate *r, double now_s, double count);
double pool_rate_get(const struct pool_rate *r, double now_s);

#define POOL_TARGET_UNBOUNDED 100000

/* P[Poisson(m) >= c]. */
double pool_poisson_tail(double m, int c);
/* Erlang C: P(wait) for k servers at offered load a erlangs. */
double pool_erlang_c(double a, int k);
/* Hot clones needed so that a claim finds one with probability hit_target,
 * for claims at lambda/s and refills of refill_s seconds, at most
 * refill_slots at once (0 = unbounded). POOL_TARGET_UNBOUNDED when refills
 * cannot keep up at all. */
int pool_target_hot(double lambda, double refill_s, int refill_slots, double hit_target);

/* Up at once, down one step per cooldown. */
struct pool_scaler {
    double cooldown_s;
    int current;
    double last_change_s;
};
void pool_scaler_init(struct pool_scaler *s, double cooldown_s);
/* Returns the size to keep now, clamped to [min, max]. */
int pool_scaler_step(struct pool_scaler *s, double now_s, int want, int min, int max);

#endif
