/* Weight-only int8 matrix product for CPU decode: y[m, n] = scale[n] * sum_k x[m, k] * q[n, k] (+ bias[n]).

x and y are fp32, q is int8 with one fp32 scale per output row (models/quant.py). Each block of int8 weights is
loaded once, widened to fp32 in registers (sign-extend, convert) and multiplied into up to four rows of x, so the
weights cross the memory bus once per call as int8 -- a quarter of fp32's bytes -- and the activations are never
rounded (llama.cpp's Q8_0 path, by contrast, rounds them to 8 bits per block of 32: ggml-cpu's vec_dot_type for
Q8_0 is Q8_0).

The instruction set is picked at run time (AVX-512 F/BW, else AVX2 + FMA, else plain C); the file is compiled
without -march flags, so one build runs on any x86-64 CPU. The GIL is released while the product runs.

Python:  _int8mm.mm(x_ptr, M, K, q_ptr, scale_ptr, bias_ptr or 0, y_ptr, N, n_begin, n_end[, threads])
         computes columns n_begin <= n < n_end of y (all M rows); every pointer is a contiguous tensor's
         data_ptr(). _int8mm.isa() -> "avx512" | "avx2" | "generic"; _int8mm.use(name) switches (for tests).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DSC_X86 1
#endif

typedef void (*mm_fn)(const float *, int64_t, int64_t, const int8_t *, const float *, const float *, float *,
                      int64_t, int64_t, int64_t);

/* one output element from `k0` on: the tail of K that the vector loop leaves, and the generic path */
static inline float dot_tail(const float *x, const int8_t *q, int64_t k0, int64_t K) {
    float s = 0.0f;
    for (int64_t k = k0; k < K; k++) s += x[k] * (float)q[k];
    return s;
}

static void mm_generic(const float *x, int64_t M, int64_t K, const int8_t *q, const float *scale,
                       const float *bias, float *y, int64_t N, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = n0; n < n1; n++) {
            float s = dot_tail(x + m * K, q + n * K, 0, K) * scale[n];
            y[m * N + n] = bias ? s + bias[n] : s;
        }
}

#ifdef DSC_X86
#ifndef PREFETCH
#define PREFETCH 4096
#endif

/* AVX2: 4 weight rows x up to 2 activation rows per pass, 8 k at a time (8 accumulators of the 16 ymm
   registers). Both paths prefetch each weight row PREFETCH bytes ahead: measured on a Xeon (1 thread, weights from
   memory), 4 KB ahead read int8 weights 1.3-1.7x faster than the hardware prefetcher alone. */
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static inline __m256 widen8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* R (1..2) activation rows against weight rows n..n+3; R is a constant at each call, so the loops unroll */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline))
void block256(const float *x, int R, int64_t K, const int8_t *q, const float *scale, const float *bias, float *y,
              int64_t N, int64_t n) {
    const int64_t K8 = K & ~(int64_t)7;
    const int8_t *qr[4] = {q + n * K, q + (n + 1) * K, q + (n + 2) * K, q + (n + 3) * K};
    __m256 acc[2][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
        if ((k & 63) == 0)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(qr[j] + k + PREFETCH), _MM_HINT_T0);
        __m256 w[4] = {widen8(qr[0] + k), widen8(qr[1] + k), widen8(qr[2] + k), widen8(qr[3] + k)};
        for (int i = 0; i < R; i++) {
            __m256 v = _mm256_loadu_ps(x + i * K + k);
            for (int j = 0; j < 4; j++) acc[i][j] = _mm256_fmadd_ps(v, w[j], acc[i][j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) {
            float s = (hsum256(acc[i][j]) + dot_tail(x + i * K, qr[j], K8, K)) * scale[n + j];
            y[i * N + n + j] = bias ? s + bias[n + j] : s;
        }
}

__attribute__((target("avx2,fma")))
static void mm_avx2(const float *x, int64_t M, int64_t K, const int8_t *q, const float *scale, const float *bias,
                    float *y, int64_t N, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4)
        for (int64_t m = 0; m < M; m += 2) {
            if (M - m == 1) block256(x + m * K, 1, K, q, scale, bias, y + m * N, N, n);
            else block256(x + m * K, 2, K, q, scale, bias, y + m * N, N, n);
        }
    if (n < n1) mm_generic(x, M, K, q, scale, bias, y, N, n, n1);
}

/* AVX-512: 4 weight rows x up to 4 activation rows per pass, 16 k at a time (16 accumulators of the 32 zmm registers) */
__attribute__((target("avx512f,avx512bw"))) static inline __m512 widen16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* R (1..4) activation rows against weight rows n..n+3; R is a constant at each call, so the loops unroll */
__attribute__((target("avx512f,avx512bw"))) static inline __attribute__((always_inline))
void block512(const float *x, int R, int64_t K, const int8_t *q, const float *scale, const float *bias, float *y,
              int64_t N, int64_t n) {
    const int64_t K16 = K & ~(int64_t)15;
    const int8_t *qr[4] = {q + n * K, q + (n + 1) * K, q + (n + 2) * K, q + (n + 3) * K};
    __m512 acc[4][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K16; k += 16) {
        if ((k & 63) == 0)
            for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(qr[j] + k + PREFETCH), _MM_HINT_T0);
        __m512 w[4] = {widen16(qr[0] + k), widen16(qr[1] + k), widen16(qr[2] + k), widen16(qr[3] + k)};
        for (int i = 0; i < R; i++) {
            __m512 v = _mm512_loadu_ps(x + i * K + k);
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_fmadd_ps(v, w[j], acc[i][j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) {
            float s = (_mm512_reduce_add_ps(acc[i][j]) + dot_tail(x + i * K, qr[j], K16, K)) * scale[n + j];
            y[i * N + n + j] = bias ? s + bias[n + j] : s;
        }
}

__attribute__((target("avx512f,avx512bw")))
static void mm_avx512(const float *x, int64_t M, int64_t K, const int8_t *q, const float *scale, const float *bias,
                      float *y, int64_t N, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4)
        for (int64_t m = 0; m < M; m += 4) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            switch (M - m < 4 ? (int)(M - m) : 4) {
                case 1: block512(xm, 1, K, q, scale, bias, ym, N, n); break;
                case 2: block512(xm, 2, K, q, scale, bias, ym, N, n); break;
                case 3: block512(xm, 3, K, q, scale, bias, ym, N, n); break;
                default: block512(xm, 4, K, q, scale, bias, ym, N, n);
            }
        }
    if (n < n1) mm_generic(x, M, K, q, scale, bias, y, N, n, n1);
}
#endif

static mm_fn chosen = NULL;
static const char *chosen_name = "generic";

static void choose(void) {
    chosen = mm_generic;
#ifdef DSC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        chosen = mm_avx512; chosen_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        chosen = mm_avx2; chosen_name = "avx2";
    }
#endif
}

/* Threads: the output rows are split into `threads` contiguous slices (multiples of 4 rows), one per thread;
   the calling thread takes the first. Threads are started per call (tens of microseconds), so a product smaller
   than PARALLEL_MIN multiply-adds stays on one thread. */
#define PARALLEL_MIN (1 << 20)
#define MAX_THREADS 64

typedef struct {
    const float *x; int64_t M, K; const int8_t *q; const float *scale, *bias; float *y; int64_t N, n0, n1;
} job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    chosen(j->x, j->M, j->K, j->q, j->scale, j->bias, j->y, j->N, j->n0, j->n1);
    return NULL;
}

static void mm_threads(job_t whole, int threads) {
    int64_t rows = whole.n1 - whole.n0;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows / 4) threads = (int)(rows / 4);
    if (threads <= 1 || whole.M * whole.K * rows < PARALLEL_MIN) {
        run_job(&whole);
        return;
    }
    job_t jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int64_t per = ((rows + threads - 1) / threads + 3) & ~(int64_t)3;
    for (int t = 0; t < threads; t++) {
        jobs[t] = whole;
        jobs[t].n0 = whole.n0 + t * per < whole.n1 ? whole.n0 + t * per : whole.n1;
        jobs[t].n1 = jobs[t].n0 + per < whole.n1 ? jobs[t].n0 + per : whole.n1;
    }
    for (int t = 1; t < threads; t++)
        started[t] = jobs[t].n0 < jobs[t].n1 && pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else if (jobs[t].n0 < jobs[t].n1) run_job(&jobs[t]);      /* a thread could not start: do its share */
    }
}

static PyObject *py_mm(PyObject *self, PyObject *args) {
    Py_ssize_t xp, M, K, qp, sp, bp, yp, N, n0, n1;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnn|i", &xp, &M, &K, &qp, &sp, &bp, &yp, &N, &n0, &n1, &threads))
        return NULL;
    if (M < 0 || K < 0 || N < 0 || n0 < 0 || n1 > N || n0 > n1) {
        PyErr_SetString(PyExc_ValueError, "_int8mm.mm: bad sizes");
        return NULL;
    }
    job_t whole = {(const float *)xp, M, K, (const int8_t *)qp, (const float *)sp, (const float *)bp, (float *)yp,
                   N, n0, n1};
    Py_BEGIN_ALLOW_THREADS
    mm_threads(whole, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Tests run every instruction set this CPU has: use("avx2") etc.; False when the CPU lacks it. */
static PyObject *py_use(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    if (strcmp(name, "generic") == 0) { chosen = mm_generic; chosen_name = "generic"; Py_RETURN_TRUE; }
#ifdef DSC_X86
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        chosen = mm_avx2; chosen_name = "avx2"; Py_RETURN_TRUE;
    }
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        chosen = mm_avx512; chosen_name = "avx512"; Py_RETURN_TRUE;
    }
#endif
    Py_RETURN_FALSE;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(chosen_name); }

static PyMethodDef methods[] = {
    {"mm", py_mm, METH_VARARGS, "y[:, n0:n1] = (x @ q[n0:n1].T) * scale[n0:n1] (+ bias) over raw pointers"},
    {"isa", py_isa, METH_NOARGS, "the instruction set the product runs on"},
    {"use", py_use, METH_VARARGS, "run on 'avx512' | 'avx2' | 'generic' if this CPU has it; returns whether"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_int8mm", NULL, -1, methods};

PyMODINIT_FUNC PyInit__int8mm(void) {
    choose();
    return PyModule_Create(&module);
}
