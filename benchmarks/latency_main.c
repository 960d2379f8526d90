/* latency_main.c: batch-1 inference latency of a model emitted by
 * `cnncc emit SPEC --inference-only --batch 1`, with no Python in the way.
 *
 * Build (the harness does this, no shell):
 *   cc -std=c99 -O3 -march=native -I DIR -DMODEL=lenet5 -DMODEL_UPPER=LENET5 -DREAL=float \
 *      -DMODEL_HEADER='"lenet5.h"' latency_main.c DIR/lenet5.c -lm -o latency
 * Run:   ./latency SECONDS [MIN_CALLS]  ->  "median_us M p10_us A p90_us B calls N check C"
 *
 * Parameters and the input are fixed pseudo-random numbers (the values do not change the
 * work); every call is timed on its own with CLOCK_MONOTONIC after WARMUP_CALLS calls, for
 * about SECONDS in all and at least MIN_CALLS (default 20) calls.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include MODEL_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define API(suffix) CAT(MODEL, suffix)        /* lenet5 ## _forward */
#define SIZE(suffix) CAT(MODEL_UPPER, suffix) /* LENET5 ## _ARENA_SIZE */

enum { WARMUP_CALLS = 3, DEFAULT_MIN_CALLS = 20, MAX_CALLS = 1000000 };

typedef REAL real; /* the model's element type: -DREAL=float or -DREAL=double */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* count elements on a 64-byte boundary (a cache line, as the Python module's buffers are:
   cnncc/buffers.py, BUFFER_ALIGNMENT), or NULL. */
static real *aligned(size_t count)
{
    void *memory = NULL;
    return posix_memalign(&memory, 64, sizeof(real) * count) == 0 ? memory : NULL;
}

/* A deterministic value in [-scale, scale) (xorshift64). */
static double pseudo_random(unsigned long long *state, double scale)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return scale * (2.0 * (double)(*state >> 11) / 9007199254740992.0 - 1.0);
}

int main(int argc, char **argv)
{
    const double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    const long min_calls = argc > 2 ? atol(argv[2]) : DEFAULT_MIN_CALLS;
    if (!(seconds > 0) || min_calls < 1 || min_calls > MAX_CALLS) {
        fprintf(stderr, "usage: latency SECONDS [MIN_CALLS]\n");
        return 2;
    }
    real *params = aligned(SIZE(_NUM_PARAMS) + 1);
    real *arena = aligned(SIZE(_ARENA_SIZE));
    real *input = aligned((size_t)SIZE(_INPUT_SIZE) * SIZE(_BATCH));
    if (!params || !arena || !input) {
        fprintf(stderr, "latency: out of memory\n");
        return 1;
    }
    unsigned long long state = 0x9E3779B97F4A7C15ULL;
    for (long i = 0; i < (long)SIZE(_NUM_PARAMS); i++)
        params[i] = (real)pseudo_random(&state, 0.05);
    for (long i = 0; i < (long)SIZE(_INPUT_SIZE) * SIZE(_BATCH); i++)
        input[i] = (real)pseudo_random(&state, 1.0);
    const API(_context) ctx = {.params = params, .arena = arena};

    double start = now();
    for (int i = 0; i < WARMUP_CALLS; i++)
        API(_forward)(&ctx, input);
    const double per_call = (now() - start) / WARMUP_CALLS;
    long calls = (long)(seconds / (per_call > 1e-9 ? per_call : 1e-9));
    calls = calls < min_calls ? min_calls : calls > MAX_CALLS ? MAX_CALLS : calls;
    double *samples = malloc(sizeof(double) * (size_t)calls);
    if (!samples) {
        fprintf(stderr, "latency: out of memory\n");
        return 1;
    }
    double check = 0;
    for (long i = 0; i < calls; i++) {
        start = now();
        API(_forward)(&ctx, input);
        samples[i] = now() - start;
        check += (double)API(_output)(&ctx)[0];
    }
    qsort(samples, (size_t)calls, sizeof(double), by_value);
    printf("median_us %.3f p10_us %.3f p90_us %.3f calls %ld check %g\n", 1e6 * samples[calls / 2],
           1e6 * samples[calls / 10], 1e6 * samples[(9 * calls) / 10], calls, check);
    free(samples);
    free(input);
    free(arena);
    free(params);
    return 0;
}
