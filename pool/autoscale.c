/* autoscale.c - how many hot clones an environment should keep.
 *
 * Claims arrive at rate lambda (per second, an EWMA of observed claims);
 * each claim of a hot clone starts a refill that takes T seconds (an EWMA
 * of observed restore times). Refills in flight behave like an M/G/inf
 * queue: their number is Poisson with mean lambda*T (Little's law). A
 * claim finds the hot tier empty exactly when c or more refills are in
 * flight, for a pool of c. So the smallest c with
 *     P[Poisson(lambda*T) >= c] <= 1 - hit_target
 * keeps the hot hit rate at the target (0.95 = a p95 claim served hot).
 * When a node can run at most k refills at once the refill queue is
 * M/M/k and Erlang C gives the extra wait; refills then last T + Wq, and
 * the same rule is applied with that longer time.
 *
 * Scale up at once; scale down one clone per cooldown period, only while
 * the target stays below the current size.
 */
#include "pool/pool.h"

#include <math.h>

void pool_ewma_init(struct pool_ewma *e, double half_life_s)
{
    e->half_life_s = half_life_s > 0 ? half_life_s : 30;
    e->value = 0;
    e->last_s = -1;
}

void pool_ewma_add(struct pool_ewma *e, double now_s, double sample)
{
    if (e->last_s < 0) {
        e->value = sample;
    } else {
        double dt = now_s - e->last_s;
        double a = dt > 0 ? 1 - exp2(-dt / e->half_life_s) : 0;
        e->value += a * (sample - e->value);
    }
    e->last_s = now_s;
}

void pool_rate_init(struct pool_rate *r, double half_life_s)
{
    r->half_life_s = half_life_s > 0 ? half_life_s : 30;
    r->rate = 0;
    r->last_s = -1;
}

/* An event-rate EWMA: each event adds 1/tau to a rate that decays with
 * time constant tau, so a steady stream of lambda/s converges to lambda. */
void pool_rate_event(struct pool_rate *r, double now_s, double count)
{
    double tau = r->half_life_s / M_LN2;

    if (r->last_s >= 0 && now_s > r->last_s)
        r->rate *= exp(-(now_s - r->last_s) / tau);
    r->last_s = now_s;
    r->rate += count / tau;
}

double pool_rate_get(const struct pool_rate *r, double now_s)
{
    double tau = r->half_life_s / M_LN2;

    if (r->last_s < 0)
        return 0;
    return now_s > r->last_s ? r->rate * exp(-(now_s - r->last_s) / tau) : r->rate;
}

/* P[Poisson(m) >= c], summed in a numerically safe way. */
double pool_poisson_tail(double m, int c)
{
    double term, cdf = 0;

    if (c <= 0)
        return 1;
    if (m <= 0)
        return 0;
    term = exp(-m);
    for (int i = 0; i < c; i++) {
        cdf += term;
        term *= m / (i + 1);
    }
    return cdf >= 1 ? 0 : 1 - cdf;
}

/* Erlang C: probability that an arrival waits, for k servers, offered
 * load a = lambda/mu (erlangs). 1 when the queue is unstable. */
double pool_erlang_c(double a, int k)
{
    double b = 1; /* Erlang B by the stable recurrence */

    if (k <= 0 || a >= k)
        return 1;
    for (int i = 1; i <= k; i++)
        b = a * b / (i + a * b);
    return k * b / (k - a * (1 - b));
}

int pool_target_hot(double lambda, double refill_s, int refill_slots, double hit_target)
{
    double t = refill_s;

    if (lambda <= 0 || refill_s <= 0)
        return 0;
    if (hit_target <= 0 || hit_target >= 1)
        hit_target = 0.95;
    if (refill_slots > 0) {
        double a = lambda * refill_s;
        if (a >= refill_slots)
            return POOL_TARGET_UNBOUNDED; /* refills cannot keep up */
        /* Mean wait in an M/M/k queue: C(k,a) / (k*mu - lambda). */
        double wq = pool_erlang_c(a, refill_slots) / (refill_slots / refill_s - lambda);
        t += wq;
    }
    double m = lambda * t;
    int c = 0;
    while (pool_poisson_tail(m, c) > 1 - hit_target && c < POOL_TARGET_UNBOUNDED)
        c++;
    return c;
}

double pool_refill_capacity(double refill_s, int refill_slots)
{
    if (refill_s <= 0 || refill_slots <= 0)
        return 0;
    return refill_slots / refill_s;
}

/* The claim starts once the restores ahead of it (queued or running) have
 * left a slot to it: the (ahead + busy - k + 1)-th completion from now,
 * completions coming k per restore_s. Running restores are counted whole
 * (pessimistic by up to one restore_s / k). */
double pool_claim_wait_s(int ahead, int busy, int refill_slots, double restore_s)
{
    int k = refill_slots > 0 ? refill_slots : 1;
    int m = (ahead > 0 ? ahead : 0) + (busy > 0 ? busy : 0) - k + 1;

    if (m <= 0 || restore_s <= 0)
        return 0;
    return m * restore_s / k;
}

void pool_scaler_init(struct pool_scaler *s, double cooldown_s)
{
    s->cooldown_s = cooldown_s > 0 ? cooldown_s : 60;
    s->current = -1;
    s->last_change_s = -1e18;
}

int pool_scaler_step(struct pool_scaler *s, double now_s, int want, int min, int max)
{
    if (max < min)
        max = min;
    if (want < min)
        want = min;
    if (want > max)
        want = max;
    if (s->current < 0 || want > s->current) {
        s->current = want; /* up at once */
        s->last_change_s = now_s;
    } else if (want < s->current && now_s - s->last_change_s >= s->cooldown_s) {
        s->current--; /* down slowly */
        s->last_change_s = now_s;
    }
    if (s->current > max)
        s->current = max;
    if (s->current < min)
        s->current = min;
    return s->current;
}

int pool_mem_fit(uint64_t budget, uint64_t used, uint64_t per_clone, int hot_now)
{
    if (per_clone == 0)
        return POOL_TARGET_UNBOUNDED;
    if (hot_now < 0)
        hot_now = 0;
    uint64_t more = budget > used ? (budget - used) / per_clone : 0;
    if (more > POOL_TARGET_UNBOUNDED)
        return POOL_TARGET_UNBOUNDED;
    int fit = hot_now + (int)more;
    /* used counts the hot clones too: when they alone exceed the budget,
     * fit drops below hot_now so the surplus goes. */
    if (used > budget) {
        uint64_t over = (used - budget + per_clone - 1) / per_clone;
        fit = over >= (uint64_t)hot_now ? 0 : hot_now - (int)over;
    }
    return fit > POOL_TARGET_UNBOUNDED ? POOL_TARGET_UNBOUNDED : fit;
}
