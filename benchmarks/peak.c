/* peak.c: this machine's float32 fused multiply-add throughput, the "100%" of the
 * benchmark's "% of peak" column.
 *
 * Each thread keeps ACCUMULATORS independent vectors of LANES floats and updates every one
 * with acc = acc * MUL + ADD in a loop: no dependency between accumulators, so the FMA
 * units stay busy (an FMA has a latency of about 4 cycles and modern cores issue 2 per
 * cycle, so at least 8 independent chains are needed). MUL and ADD are read from volatile
 * variables so the compiler cannot fold the loop; acc converges to ADD / (1 - MUL) = 1, so
 * no value ever overflows or becomes denormal. The sum of the accumulators is printed so
 * the loop cannot be removed.
 *
 * Build: cc -O3 -march=native -ffp-contract=fast -pthread peak.c -o peak
 *   (-ffp-contract=fast lets a*b + c become one FMA instruction; no -ffast-math.)
 * Run:   ./peak THREADS SECONDS   ->  prints "gflops <total GFLOP/s> threads <n> check <sum>"
 * A FLOP is counted the usual way: one FMA = 2 FLOPs.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum {
    LANES = 16,              /* floats per vector: 64 bytes, split by the compiler as needed */
    ACCUMULATORS = 12,       /* independent FMA chains per thread */
    INNER = 1 << 16,         /* loop iterations between clock reads */
    MAX_THREADS = 256,
};

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static volatile float mul_value = 0.9999f;
static volatile float add_value = 0.0001f;

typedef struct worker {
    double seconds;   /* how long to run */
    double flops;     /* done */
    double elapsed;   /* taken */
    float check;      /* sum of the accumulators */
} worker;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *run(void *arg)
{
    worker *w = arg;
    vec acc[ACCUMULATORS], mul, add;
    for (int l = 0; l < LANES; l++) {
        mul[l] = mul_value;
        add[l] = add_value;
    }
    for (int a = 0; a < ACCUMULATORS; a++)
        for (int l = 0; l < LANES; l++)
            acc[a][l] = (float)(a + l) / (ACCUMULATORS + LANES);
    const double start = now();
    long rounds = 0;
    double elapsed;
    do {
        for (int i = 0; i < INNER; i++)
            for (int a = 0; a < ACCUMULATORS; a++)
                acc[a] = acc[a] * mul + add;
        rounds++;
        elapsed = now() - start;
    } while (elapsed < w->seconds);
    float sum = 0;
    for (int a = 0; a < ACCUMULATORS; a++)
        for (int l = 0; l < LANES; l++)
            sum += acc[a][l];
    w->check = sum;
    w->elapsed = elapsed;
    w->flops = 2.0 * (double)rounds * INNER * ACCUMULATORS * LANES;
    return NULL;
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    const double seconds = argc > 2 ? atof(argv[2]) : 0.5;
    if (threads < 1 || threads > MAX_THREADS || !(seconds > 0)) {
        fprintf(stderr, "usage: peak THREADS SECONDS (1..%d threads, seconds > 0)\n", MAX_THREADS);
        return 2;
    }
    static pthread_t ids[MAX_THREADS];
    static worker workers[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        workers[t].seconds = seconds;
        if (pthread_create(&ids[t], NULL, run, &workers[t]) != 0) {
            fprintf(stderr, "peak: cannot start thread %d\n", t);
            return 1;
        }
    }
    double gflops = 0, check = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        gflops += workers[t].flops / workers[t].elapsed / 1e9;
        check += workers[t].check;
    }
    printf("gflops %.3f threads %d check %.6f\n", gflops, threads, check);
    return 0;
}
