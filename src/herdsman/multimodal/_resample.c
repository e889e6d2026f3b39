/* Bit-exact reimplementation of Pillow's 8-bit convolution resampling (ImagingResample in
 * Pillow's src/libImaging/Resample.c) for uint8 numpy images with 1 or 3 channels, plus the two
 * post-resize steps of herdsman's image processors (per-channel lookup-table normalisation to
 * CHW float32, and Qwen2-VL's patch gather).
 *
 * Exactness: the filter coefficients are computed in double precision with the same expressions,
 * in the same order, as Pillow (precompute_coeffs), then rounded to fixed point as Pillow does
 * (normalize_coeffs_8bpc). Everything after that is int32 adds of int32 products, which never
 * overflow for 8-bit input (|sum| < 2^31, see below), so the order of summation does not change
 * the result: the SIMD kernels may add taps and lanes in any order. The result is clipped as
 * Pillow's clip8 table does: (sum >> PRECISION_BITS) clamped to 0..255.
 *
 * The coefficient code must not be compiled with floating-point contraction that Pillow's own
 * build does not use; it is kept out of the target("avx2") functions, so on x86-64 it is plain
 * SSE2 double arithmetic, as in Pillow's wheels.
 *
 * The control flow follows Pillow 13.0.0's ImagingResampleInner (see resample_job), including its
 * choice of which pass runs first, which changes the result (the intermediate is rounded to 8
 * bits).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(HM_NO_SIMD)
#define HM_X86 1
#include <immintrin.h>
#define HM_AVX2 __attribute__((target("avx2")))
#else
#define HM_X86 0
#endif

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* ------------------------------------------------------------------------------------------ */
/* Filters: the same functions and supports as Pillow.                                         */

struct filter {
    double (*filter)(double x);
    double support;
};

static inline double
box_filter(double x) {
    if (x > -0.5 && x <= 0.5) {
        return 1.0;
    }
    return 0.0;
}

static inline double
bilinear_filter(double x) {
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return 1.0 - x;
    }
    return 0.0;
}

static inline double
hamming_filter(double x) {
    if (x < 0.0) {
        x = -x;
    }
    if (x == 0.0) {
        return 1.0;
    }
    if (x >= 1.0) {
        return 0.0;
    }
    x = x * M_PI;
    /* The float constants are Pillow's: 0.54f and 0.46f promoted to double. */
    return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static inline double
bicubic_filter(double x) {
    /* a = -0.5, written out as Pillow's macro expands. */
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
        return (((x - 5) * x + 8) * x - 4) * -0.5;
    }
    return 0.0;
}

static inline double
sinc_filter(double x) {
    if (x == 0.0) {
        return 1.0;
    }
    x = x * M_PI;
    return sin(x) / x;
}

static inline double
lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) {
        return sinc_filter(x) * sinc_filter(x / 3);
    }
    return 0.0;
}

static const struct filter BOX = {box_filter, 0.5};
static const struct filter BILINEAR = {bilinear_filter, 1.0};
static const struct filter HAMMING = {hamming_filter, 1.0};
static const struct filter BICUBIC = {bicubic_filter, 2.0};
static const struct filter LANCZOS = {lanczos_filter, 3.0};

/* Pillow's Image.Resampling values. */
enum { F_NEAREST = 0, F_LANCZOS = 1, F_BILINEAR = 2, F_BICUBIC = 3, F_BOX = 4, F_HAMMING = 5 };

#define PRECISION_BITS (32 - 8 - 2)
#define ROUND_START (1 << (PRECISION_BITS - 1))

/* Pillow's clip8: a table indexed by sum >> PRECISION_BITS over -640..639, i.e. a clamp. */
static inline uint8_t
clip8(int32_t in) {
    int32_t v = in >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* ------------------------------------------------------------------------------------------ */
/* Coefficients: Pillow's precompute_coeffs and normalize_coeffs_8bpc.                          */

typedef struct {
    int ksize;      /* Pillow's ksize: the row length of kk */
    int maxtaps;    /* the largest bounds[2i + 1] */
    int *bounds;    /* (xmin, xmax) per output position */
    int32_t *kk;    /* fixed-point coefficients, outSize * ksize, zero beyond xmax */
} Coeffs;

static void
coeffs_free(Coeffs *c) {
    free(c->bounds);
    free(c->kk);
    c->bounds = NULL;
    c->kk = NULL;
}

/* Returns 0 on success, -1 on allocation failure or overflow. */
static int
precompute_coeffs(
    int inSize, float in0, float in1, int outSize, const struct filter *filterp, Coeffs *out
) {
    double support, scale, filterscale;
    int xx, x, ksize, xmin, xmax;
    int *bounds;
    double *prekk, *k;
    int32_t *kk;

    out->bounds = NULL;
    out->kk = NULL;

    filterscale = scale = (double)(in1 - in0) / outSize;
    if (filterscale < 1.0) {
        filterscale = 1.0;
    }
    support = filterp->support * filterscale;
    ksize = (int)ceil(support) * 2 + 1;
    if (outSize > INT_MAX / (ksize * (int)sizeof(double))) {
        return -1;
    }
    prekk = malloc((size_t)outSize * ksize * sizeof(double));
    bounds = malloc((size_t)outSize * 2 * sizeof(int));
    kk = malloc((size_t)outSize * ksize * sizeof(int32_t));
    if (!prekk || !bounds || !kk) {
        free(prekk);
        free(bounds);
        free(kk);
        return -1;
    }

    double inv_filterscale = 1.0 / filterscale;
    int maxtaps = 0;
    for (xx = 0; xx < outSize; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        xmin = (int)(center - support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        xmax = (int)(center + support + 0.5);
        if (xmax > inSize) {
            xmax = inSize;
        }
        xmax -= xmin;
        k = &prekk[(size_t)xx * ksize];
        for (x = 0; x < xmax; x++) {
            double w = filterp->filter((x + xmin - center + 0.5) * inv_filterscale);
            k[x] = w;
            ww += w;
        }
        if (ww != 0.0) {
            for (x = 0; x < xmax; x++) {
                k[x] /= ww;
            }
        }
        for (; x < ksize; x++) {
            k[x] = 0;
        }
        bounds[xx * 2 + 0] = xmin;
        bounds[xx * 2 + 1] = xmax;
        if (xmax > maxtaps) {
            maxtaps = xmax;
        }
    }
    /* normalize_coeffs_8bpc */
    for (size_t i = 0; i < (size_t)outSize * ksize; i++) {
        if (prekk[i] < 0) {
            kk[i] = (int32_t)(-0.5 + prekk[i] * (1 << PRECISION_BITS));
        } else {
            kk[i] = (int32_t)(0.5 + prekk[i] * (1 << PRECISION_BITS));
        }
    }
    free(prekk);
    out->ksize = ksize;
    out->maxtaps = maxtaps;
    out->bounds = bounds;
    out->kk = kk;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels. The vertical kernel is the core: dst[i] = clip8(start + sum_t rows[t][i] * k[t])    */
/* over contiguous bytes (pixels and channels alike).                                           */

static void
vert_scalar(const uint8_t *const *rows, const int32_t *k, int n, uint8_t *dst, size_t len) {
    for (size_t i = 0; i < len; i++) {
        int32_t ss = ROUND_START;
        for (int t = 0; t < n; t++) {
            ss += (int32_t)rows[t][i] * k[t];
        }
        dst[i] = clip8(ss);
    }
}

/* Horizontal pass, one row, any channel count: Pillow's loop as written. Input pixels are `ps`
 * bytes apart (ps = C, or 4 for Pillow's own RGBX layout); the output is packed. */
static void
horiz_scalar(
    const uint8_t *in, int ps, uint8_t *out, int out_w, int C, const int *bounds,
    const int32_t *kk, int ksize
) {
    for (int xx = 0; xx < out_w; xx++) {
        int xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1];
        const int32_t *k = &kk[(size_t)xx * ksize];
        const uint8_t *p = in + (size_t)xmin * ps;
        for (int c = 0; c < C; c++) {
            int32_t ss = ROUND_START;
            for (int x = 0; x < xmax; x++) {
                ss += (int32_t)p[x * ps + c] * k[x];
            }
            out[(size_t)xx * C + c] = clip8(ss);
        }
    }
}

#if HM_X86
/* 32 bytes at a time: four 8-lane int32 accumulators; packs/packus saturate exactly as clip8
 * clamps (sum >> 22 lies within -640..639, well inside int16). */
HM_AVX2 static void
vert_avx2(const uint8_t *const *rows, const int32_t *k, int n, uint8_t *dst, size_t len) {
    const __m256i start = _mm256_set1_epi32(ROUND_START);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t i = 0;
    for (; i + 32 <= len; i += 32) {
        __m256i a0 = start, a1 = start, a2 = start, a3 = start;
        for (int t = 0; t < n; t++) {
            const __m256i kv = _mm256_set1_epi32(k[t]);
            const uint8_t *p = rows[t] + i;
            __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 0)));
            __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)));
            __m256i v2 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 16)));
            __m256i v3 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 24)));
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(v0, kv));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(v1, kv));
            a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(v2, kv));
            a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(v3, kv));
        }
        a0 = _mm256_srai_epi32(a0, PRECISION_BITS);
        a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
        a2 = _mm256_srai_epi32(a2, PRECISION_BITS);
        a3 = _mm256_srai_epi32(a3, PRECISION_BITS);
        __m256i p01 = _mm256_packs_epi32(a0, a1);
        __m256i p23 = _mm256_packs_epi32(a2, a3);
        __m256i b = _mm256_packus_epi16(p01, p23);
        b = _mm256_permutevar8x32_epi32(b, order);
        _mm256_storeu_si256((__m256i *)(dst + i), b);
    }
    for (; i + 8 <= len; i += 8) {
        __m256i a = start;
        for (int t = 0; t < n; t++) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rows[t] + i)));
            a = _mm256_add_epi32(a, _mm256_mullo_epi32(v, _mm256_set1_epi32(k[t])));
        }
        a = _mm256_srai_epi32(a, PRECISION_BITS);
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        _mm_storel_epi64((__m128i *)(dst + i), _mm_packus_epi16(w, w));
    }
    for (; i < len; i++) {
        int32_t ss = ROUND_START;
        for (int t = 0; t < n; t++) {
            ss += (int32_t)rows[t][i] * k[t];
        }
        dst[i] = clip8(ss);
    }
}

/* Three channels: per output pixel, four taps per step. 16 bytes loaded at the first tap hold
 * four RGB pixels (and one spare byte); a shuffle spreads them to RGB0 RGB0 RGB0 RGB0, two
 * zero-extensions give two 8-lane vectors (two pixels each), multiplied by coefficient vectors
 * laid out as [k0 x4, k1 x4], [k2 x4, k3 x4]. Coefficients past a pixel's taps are zero, so the
 * over-read pixels add nothing; the caller guarantees the over-read stays inside memory. */
/* Four taps of one output pixel: acc += [p0 p1] * k[0] + [p2 p3] * k[1]. Packed RGB input is
 * spread to RGB0 by a shuffle; Pillow's RGBX input is loaded as is (the X lane is discarded). */
HM_AVX2 static inline __attribute__((always_inline)) __m256i
taps4(const uint8_t *p, const __m256i *k, __m256i acc, const int rgbx) {
    const __m128i shuf = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    if (!rgbx) {
        v = _mm_shuffle_epi8(v, shuf);
    }
    __m256i lo = _mm256_cvtepu8_epi32(v);
    __m256i hi = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v));
    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(lo, _mm256_loadu_si256(k)));
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(hi, _mm256_loadu_si256(k + 1)));
}

HM_AVX2 static inline __attribute__((always_inline)) void
horiz3_body(const uint8_t *in, uint8_t *out, int out_w, const int *bounds, const int32_t *kx,
            int kpad, const int rgbx) {
    const int ps = rgbx ? 4 : 3;
    const __m128i start = _mm_set1_epi32(ROUND_START);
    const __m256i start8 = _mm256_set1_epi32(ROUND_START);
    const __m128i drop_x = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const int steps = kpad / 4;
    const size_t kstride = (size_t)kpad / 2; /* __m256i per output pixel */
    const __m256i *kv = (const __m256i *)kx;
    int xx = 0;
    /* Four output pixels at a time: independent accumulators, one shared reduction. */
    for (; xx + 4 <= out_w; xx += 4) {
        const uint8_t *p0 = in + (size_t)bounds[xx * 2 + 0] * ps;
        const uint8_t *p1 = in + (size_t)bounds[xx * 2 + 2] * ps;
        const uint8_t *p2 = in + (size_t)bounds[xx * 2 + 4] * ps;
        const uint8_t *p3 = in + (size_t)bounds[xx * 2 + 6] * ps;
        const __m256i *k0 = kv + (size_t)xx * kstride;
        const __m256i *k1 = k0 + kstride, *k2 = k1 + kstride, *k3 = k2 + kstride;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = 0; j < steps; j++) {
            a0 = taps4(p0 + 4 * ps * j, k0 + 2 * j, a0, rgbx);
            a1 = taps4(p1 + 4 * ps * j, k1 + 2 * j, a1, rgbx);
            a2 = taps4(p2 + 4 * ps * j, k2 + 2 * j, a2, rgbx);
            a3 = taps4(p3 + 4 * ps * j, k3 + 2 * j, a3, rgbx);
        }
        /* [s0 | s1] and [s2 | s3]: each pixel's two halves added. */
        __m256i s01 = _mm256_add_epi32(
            _mm256_permute2x128_si256(a0, a1, 0x20), _mm256_permute2x128_si256(a0, a1, 0x31)
        );
        __m256i s23 = _mm256_add_epi32(
            _mm256_permute2x128_si256(a2, a3, 0x20), _mm256_permute2x128_si256(a2, a3, 0x31)
        );
        s01 = _mm256_srai_epi32(_mm256_add_epi32(s01, start8), PRECISION_BITS);
        s23 = _mm256_srai_epi32(_mm256_add_epi32(s23, start8), PRECISION_BITS);
        /* lanes: [s0 s2 | s1 s3] as int16, then bytes */
        __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(s01, s23), _mm256_setzero_si256());
        __m128i u = _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        /* u = [s0 s1 s2 s3] RGBX; drop X */
        u = _mm_shuffle_epi8(u, drop_x);
        uint8_t *d = out + (size_t)xx * 3;
        _mm_storel_epi64((__m128i *)d, u);
        uint32_t last = (uint32_t)_mm_extract_epi32(u, 2);
        memcpy(d + 8, &last, 4);
    }
    for (; xx < out_w; xx++) {
        const uint8_t *p = in + (size_t)bounds[xx * 2] * ps;
        const __m256i *k = kv + (size_t)xx * kstride;
        __m256i acc = _mm256_setzero_si256();
        for (int j = 0; j < steps; j++) {
            acc = taps4(p + 4 * ps * j, k + 2 * j, acc, rgbx);
        }
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        s = _mm_srai_epi32(_mm_add_epi32(s, start), PRECISION_BITS);
        s = _mm_packs_epi32(s, s);
        s = _mm_packus_epi16(s, s);
        uint32_t px = (uint32_t)_mm_cvtsi128_si32(s);
        memcpy(out + (size_t)xx * 3, &px, 3);
    }
}

HM_AVX2 static void
horiz3_avx2(const uint8_t *in, uint8_t *out, int out_w, const int *bounds, const int32_t *kx,
            int kpad) {
    horiz3_body(in, out, out_w, bounds, kx, kpad, 0);
}

HM_AVX2 static void
horiz4to3_avx2(const uint8_t *in, uint8_t *out, int out_w, const int *bounds, const int32_t *kx,
               int kpad) {
    horiz3_body(in, out, out_w, bounds, kx, kpad, 1);
}

/* One channel: per output pixel, eight taps per step (coefficients contiguous, zero-padded). */
HM_AVX2 static void
horiz1_avx2(const uint8_t *in, uint8_t *out, int out_w, const int *bounds, const int32_t *kx,
            int kpad) {
    for (int xx = 0; xx < out_w; xx++) {
        const uint8_t *p = in + bounds[xx * 2];
        const int32_t *k = kx + (size_t)xx * kpad;
        __m256i acc = _mm256_setzero_si256();
        for (int j = 0; j < kpad; j += 8) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + j)));
            acc = _mm256_add_epi32(
                acc, _mm256_mullo_epi32(v, _mm256_loadu_si256((const __m256i *)(k + j)))
            );
        }
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
        out[xx] = clip8(ROUND_START + _mm_cvtsi128_si32(s));
    }
}
#endif

static int use_avx2 = 0;

/* ------------------------------------------------------------------------------------------ */
/* ImagingResampleInner for one C-contiguous uint8 image (H, W, C).                             */

typedef struct {
    const uint8_t *const *rows; /* source rows */
    const uint8_t *const *ends; /* ends of the memory each row lies in (for over-reads) */
    int in_h, in_w, C;
    int in_ps; /* bytes per source pixel: C, or 4 for Pillow's RGBX storage of RGB */
    uint8_t *dst;
    int out_h, out_w;
    const struct filter *filterp;
    int force_scalar;
} Job;

/* The horizontal pass, one row at a time: coefficients laid out for the kernel once. */
typedef struct {
    const Coeffs *cx;
    int out_w, C, ps, kpad, simd;
    size_t in_row;  /* bytes in a source row */
    size_t need;    /* bytes a kernel may read from a row start (with over-read) */
    int32_t *kx;    /* SIMD coefficient layout */
    uint8_t *scratch; /* padded copy for rows too close to the end of their buffer */
} HPlan;

static void
hplan_free(HPlan *h) {
    free(h->kx);
    free(h->scratch);
    h->kx = NULL;
    h->scratch = NULL;
}

static int
hplan_init(HPlan *h, const Coeffs *cx, int in_w, int ps, int out_w, int C, int scalar) {
    memset(h, 0, sizeof(*h));
    h->cx = cx;
    h->out_w = out_w;
    h->C = C;
    h->ps = ps;
    h->in_row = (size_t)in_w * ps;
    h->need = h->in_row;
#if HM_X86
    if (use_avx2 && !scalar && ((C == 3 && (ps == 3 || ps == 4)) || (C == 1 && ps == 1))) {
        const int step = C == 3 ? 4 : 8;
        const int lanes = C == 3 ? 4 : 1; /* each coefficient repeated per channel lane */
        h->kpad = (cx->maxtaps + step - 1) / step * step;
        h->kx = calloc((size_t)out_w * h->kpad * lanes + 1, sizeof(int32_t));
        if (!h->kx) {
            return -1;
        }
        for (int xx = 0; xx < out_w; xx++) {
            const int xmin = cx->bounds[xx * 2], xmax = cx->bounds[xx * 2 + 1];
            const int32_t *k = &cx->kk[(size_t)xx * cx->ksize];
            int32_t *d = h->kx + (size_t)xx * h->kpad * lanes;
            for (int x = 0; x < xmax; x++) {
                for (int l = 0; l < lanes; l++) {
                    d[x * lanes + l] = k[x];
                }
            }
            size_t end = C == 3 ? (size_t)(xmin + h->kpad) * ps + 4 : (size_t)(xmin + h->kpad);
            if (end > h->need) {
                h->need = end;
            }
        }
        h->scratch = calloc(h->need, 1);
        if (!h->scratch) {
            hplan_free(h);
            return -1;
        }
        h->simd = 1;
    }
#endif
    return 0;
}

/* One output row from the source row `row`; `end` is the end of the memory `row` lies in. */
static void
hplan_row(HPlan *h, const uint8_t *row, const uint8_t *end, uint8_t *out) {
#if HM_X86
    if (h->simd) {
        if ((size_t)(end - row) < h->need) {
            memcpy(h->scratch, row, h->in_row);
            row = h->scratch;
        }
        if (h->C == 3 && h->ps == 4) {
            horiz4to3_avx2(row, out, h->out_w, h->cx->bounds, h->kx, h->kpad);
        } else if (h->C == 3) {
            horiz3_avx2(row, out, h->out_w, h->cx->bounds, h->kx, h->kpad);
        } else {
            horiz1_avx2(row, out, h->out_w, h->cx->bounds, h->kx, h->kpad);
        }
        return;
    }
#endif
    horiz_scalar(row, h->ps, out, h->out_w, h->C, h->cx->bounds, h->cx->kk, h->cx->ksize);
}

/* One vertical output row: rows[t] are the input rows of its taps. */
static void
vrow(const uint8_t *const *rows, const int32_t *k, int n, uint8_t *out, size_t len, int scalar) {
#if HM_X86
    if (use_avx2 && !scalar) {
        vert_avx2(rows, k, n, out, len);
        return;
    }
#endif
    vert_scalar(rows, k, n, out, len);
}

/* Pillow 13's ImagingResampleInner, for box = the whole image:
 *  - a pass runs only when its size changes (the same size is a copy);
 *  - when both change, the vertical pass runs first if the height shrinks by more pixels than
 *    twice the width does (in_h - out_h > 0 and > 2 * (in_w - out_w)), over every column;
 *  - otherwise the horizontal pass runs first, over just the rows the vertical pass reads.
 * Pillow stores the intermediate image whole; here it is streamed (a ring of the rows the
 * current vertical window needs, or one row), which computes the same rows from the same
 * inputs and so gives the same bytes, without a large temporary. */
static void
pack_row(const uint8_t *in, int ps, uint8_t *out, int w, int C) {
    for (int x = 0; x < w; x++) {
        for (int c = 0; c < C; c++) {
            out[(size_t)x * C + c] = in[(size_t)x * ps + c];
        }
    }
}

static int
resample_job(const Job *j) {
    Coeffs cy = {0}, cx = {0};
    HPlan hp = {0};
    const int C = j->C, ps = j->in_ps, sc = j->force_scalar;
    const int need_h = j->out_w != j->in_w;
    const int need_v = j->out_h != j->in_h;
    const int dh = j->in_h - j->out_h;
    const int v_first = need_h && need_v && dh > 0 && dh > 2 * (j->in_w - j->out_w);
    const size_t in_row = (size_t)j->in_w * ps, out_row = (size_t)j->out_w * C;
    const uint8_t **rows = NULL;
    uint8_t *buf = NULL;
    int *tags = NULL;
    int rc = -1;

    if (!need_h && !need_v) {
        for (int y = 0; y < j->in_h; y++) {
            pack_row(j->rows[y], ps, j->dst + y * out_row, j->in_w, C);
        }
        return 0;
    }
    if (need_v) {
        if (precompute_coeffs(j->in_h, 0.0f, (float)j->in_h, j->out_h, j->filterp, &cy) < 0) {
            goto done;
        }
        rows = malloc((size_t)(cy.maxtaps > 0 ? cy.maxtaps : 1) * sizeof(*rows));
        if (!rows) {
            goto done;
        }
    }
    if (need_h) {
        if (precompute_coeffs(j->in_w, 0.0f, (float)j->in_w, j->out_w, j->filterp, &cx) < 0 ||
            hplan_init(&hp, &cx, j->in_w, ps, j->out_w, C, sc) < 0) {
            goto done;
        }
    }

    if (!need_h) {
        /* Vertical only; rows of RGBX input are resampled whole, then packed. */
        if (ps != C && !(buf = malloc(in_row))) {
            goto done;
        }
        for (int yy = 0; yy < j->out_h; yy++) {
            const int ymin = cy.bounds[yy * 2], n = cy.bounds[yy * 2 + 1];
            for (int t = 0; t < n; t++) {
                rows[t] = j->rows[ymin + t];
            }
            uint8_t *d = j->dst + yy * out_row;
            vrow(rows, &cy.kk[(size_t)yy * cy.ksize], n, buf ? buf : d, in_row, sc);
            if (buf) {
                pack_row(buf, ps, d, j->in_w, C);
            }
        }
    } else if (!need_v) {
        for (int y = 0; y < j->in_h; y++) {
            hplan_row(&hp, j->rows[y], j->ends[y], j->dst + y * out_row);
        }
    } else if (v_first) {
        /* Each vertical output row (full source width) is resampled horizontally at once. */
        const size_t len = hp.need > in_row ? hp.need : in_row;
        buf = calloc(len, 1);
        if (!buf) {
            goto done;
        }
        for (int yy = 0; yy < j->out_h; yy++) {
            const int ymin = cy.bounds[yy * 2], n = cy.bounds[yy * 2 + 1];
            for (int t = 0; t < n; t++) {
                rows[t] = j->rows[ymin + t];
            }
            vrow(rows, &cy.kk[(size_t)yy * cy.ksize], n, buf, in_row, sc);
            hplan_row(&hp, buf, buf + len, j->dst + yy * out_row);
        }
    } else {
        /* Horizontal rows into a ring indexed by source row; the windows only move down, so
         * each needed row is computed once. */
        const int R = cy.maxtaps > 0 ? cy.maxtaps : 1;
        buf = malloc((size_t)R * out_row + 1);
        tags = malloc((size_t)R * sizeof(int));
        if (!buf || !tags) {
            goto done;
        }
        for (int r = 0; r < R; r++) {
            tags[r] = -1;
        }
        for (int yy = 0; yy < j->out_h; yy++) {
            const int ymin = cy.bounds[yy * 2], n = cy.bounds[yy * 2 + 1];
            for (int t = 0; t < n; t++) {
                const int y = ymin + t, slot = y % R;
                uint8_t *line = buf + (size_t)slot * out_row;
                if (tags[slot] != y) {
                    hplan_row(&hp, j->rows[y], j->ends[y], line);
                    tags[slot] = y;
                }
                rows[t] = line;
            }
            vrow(rows, &cy.kk[(size_t)yy * cy.ksize], n, j->dst + yy * out_row, out_row, sc);
        }
    }
    rc = 0;
done:
    free(rows);
    free(buf);
    free(tags);
    hplan_free(&hp);
    coeffs_free(&cy);
    coeffs_free(&cx);
    return rc;
}

/* Runs `j` on `h` rows of `row` bytes each, `row` apart, from `base`; or, with `rowp`, on
 * Pillow's row pointers (rows in one memory block are `row` apart; a block may end after any
 * row). Returns -1 on allocation failure. Call without the GIL. */
static int
run_job(Job *j, const uint8_t *base, uint8_t *const *rowp, size_t row) {
    const int h = j->in_h;
    if (h < 1) {
        return -1;
    }
    const uint8_t **rows = malloc((size_t)h * 2 * sizeof(*rows));
    if (!rows) {
        return -1;
    }
    const uint8_t **ends = rows + h;
    for (int y = 0; y < h; y++) {
        rows[y] = rowp ? rowp[y] : base + (size_t)y * row;
    }
    ends[h - 1] = rows[h - 1] + row;
    for (int y = h - 2; y >= 0; y--) {
        ends[y] = rows[y + 1] == rows[y] + row ? ends[y + 1] : rows[y] + row;
    }
    j->rows = rows;
    j->ends = ends;
    int rc = resample_job(j);
    free(rows);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Post-resize steps.                                                                           */

/* uint8 (h, w, C) with arbitrary row/column strides and unit channel stride -> float32 (C, h, w)
 * through a (C, 256) table. */
static void
lut_chw(const uint8_t *src, Py_ssize_t s0, Py_ssize_t s1, int h, int w, int C, const float *lut,
        float *dst) {
    for (int c = 0; c < C; c++) {
        const float *l = lut + 256 * c;
        float *o = dst + (size_t)c * h * w;
        for (int y = 0; y < h; y++) {
            const uint8_t *p = src + y * s0 + c;
            for (int x = 0; x < w; x++) {
                o[x] = l[p[x * s1]];
            }
            o += w;
        }
    }
}

/* Qwen2-VL's flattened patches: for merged row i, merged column j, sub-row a, sub-column b
 * (patch (i*m+a, j*m+b)), then channel c, temporal slot t, pixel row r, pixel column s:
 * lut[c][img[(i*m+a)*p + r, (j*m+b)*p + s, c]]. Every temporal slot holds the same pixels.
 *
 * The output is large (for a 1080p image, 50 MB written once and not read back here), so on x86
 * each p*p block is built in a small buffer and written with non-temporal stores when it is
 * 16-byte aligned, which saves the read-for-ownership traffic of ordinary stores. */
static void
qwen_patches(const uint8_t *img, int H, int W, const float *lut, int p, int m, int T,
             float *dst) {
    const int gh = H / p, gw = W / p;
    const size_t row = (size_t)W * 3;
    const size_t pp = (size_t)p * p;
    float *block = malloc(pp * sizeof(float) + 64);
    float *buf = block ? (float *)(((uintptr_t)block + 63) & ~(uintptr_t)63) : NULL;
    (void)buf; /* only the x86 path uses it */
    float *o = dst;
    for (int i = 0; i < gh / m; i++) {
        for (int jm = 0; jm < gw / m; jm++) {
            for (int a = 0; a < m; a++) {
                for (int b = 0; b < m; b++) {
                    const uint8_t *base = img + (size_t)((i * m + a) * p) * row +
                                          (size_t)((jm * m + b) * p) * 3;
                    for (int c = 0; c < 3; c++) {
                        const float *l = lut + 256 * c;
#if HM_X86
                        if (buf && ((uintptr_t)o & 15) == 0 && (pp & 3) == 0) {
                            float *w = buf;
                            for (int r = 0; r < p; r++) {
                                const uint8_t *q = base + r * row + c;
                                for (int s = 0; s < p; s++) {
                                    w[s] = l[q[s * 3]];
                                }
                                w += p;
                            }
                            for (int t = 0; t < T; t++) {
                                for (size_t e = 0; e < pp; e += 4) {
                                    _mm_stream_ps(o + e, _mm_load_ps(buf + e));
                                }
                                o += pp;
                            }
                            continue;
                        }
#endif
                        float *first = o;
                        for (int r = 0; r < p; r++) {
                            const uint8_t *q = base + r * row + c;
                            for (int s = 0; s < p; s++) {
                                o[s] = l[q[s * 3]];
                            }
                            o += p;
                        }
                        for (int t = 1; t < T; t++) {
                            memcpy(o, first, pp * sizeof(float));
                            o += pp;
                        }
                    }
                }
            }
        }
    }
#if HM_X86
    _mm_sfence();
#endif
    free(block);
}

/* ------------------------------------------------------------------------------------------ */
/* Python bindings (buffer protocol; no numpy C API).                                           */

static const struct filter *
filter_for(int f) {
    switch (f) {
        case F_BOX:
            return &BOX;
        case F_BILINEAR:
            return &BILINEAR;
        case F_HAMMING:
            return &HAMMING;
        case F_BICUBIC:
            return &BICUBIC;
        case F_LANCZOS:
            return &LANCZOS;
        default:
            return NULL;
    }
}

static int
check_u8_image(const Py_buffer *b, const char *what, int *h, int *w, int *c) {
    if (b->itemsize != 1 || (b->format && strcmp(b->format, "B") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be uint8", what);
        return -1;
    }
    if (b->ndim == 2) {
        *c = 1;
    } else if (b->ndim == 3 && (b->shape[2] == 1 || b->shape[2] == 3)) {
        *c = (int)b->shape[2];
    } else {
        PyErr_Format(PyExc_ValueError, "%s must be (H, W) or (H, W, 1|3)", what);
        return -1;
    }
    if (b->shape[0] < 1 || b->shape[1] < 1 || b->shape[0] > INT_MAX / 4 ||
        b->shape[1] > INT_MAX / 4) {
        PyErr_Format(PyExc_ValueError, "%s has an unsupported size", what);
        return -1;
    }
    *h = (int)b->shape[0];
    *w = (int)b->shape[1];
    return 0;
}

PyDoc_STRVAR(resample_doc,
             "resample(src, dst, filter, scalar=False)\n--\n\n"
             "Resize C-contiguous uint8 `src` (H, W) or (H, W, 1|3) into `dst` (same layout, the\n"
             "output size), bit-identical to Pillow's Image.resize with that Resampling filter\n"
             "(not NEAREST). `scalar` forces the portable kernels (for tests).");

static PyObject *
py_resample(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"src", "dst", "filter", "scalar", NULL};
    PyObject *srco, *dsto;
    Py_buffer src, dst;
    int filter, scalar = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOi|p:resample", kwlist, &srco, &dsto, &filter, &scalar
        )) {
        return NULL;
    }
    const struct filter *fp = filter_for(filter);
    if (!fp) {
        PyErr_Format(PyExc_ValueError, "unsupported resampling filter %d", filter);
        return NULL;
    }
    if (PyObject_GetBuffer(srco, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(dsto, &dst, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Job j;
    int dc;
    int rc = -1;
    if (check_u8_image(&src, "src", &j.in_h, &j.in_w, &j.C) < 0 ||
        check_u8_image(&dst, "dst", &j.out_h, &j.out_w, &dc) < 0) {
        goto out;
    }
    if (dc != j.C || src.ndim != dst.ndim) {
        PyErr_SetString(PyExc_ValueError, "src and dst must have the same channels");
        goto out;
    }
    j.in_ps = j.C;
    j.dst = dst.buf;
    j.filterp = fp;
    j.force_scalar = scalar;
    Py_BEGIN_ALLOW_THREADS;
    rc = run_job(&j, src.buf, NULL, (size_t)j.in_w * j.C);
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        PyErr_NoMemory();
    }
out:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Resize Pillow's own pixels (an h x w image, `ps` bytes a pixel, in one block `base` or as row
 * pointers `rows`) into dsto, a uint8 (H', W') or (H', W', 3) array, without the GIL. */
static PyObject *
resample_pillow_pixels(PyObject *dsto, int h, int w, int channels, int ps,
                       const struct filter *fp, int scalar, const uint8_t *base,
                       uint8_t *const *rows) {
    Py_buffer dst;
    if (PyObject_GetBuffer(dsto, &dst, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    Job j;
    int dc, rc = -1;
    if (check_u8_image(&dst, "dst", &j.out_h, &j.out_w, &dc) < 0) {
        goto out;
    }
    if (dc != channels) {
        PyErr_SetString(PyExc_ValueError, "src and dst must have the same channels");
        goto out;
    }
    j.in_h = h;
    j.in_w = w;
    j.C = channels;
    j.in_ps = ps;
    j.dst = dst.buf;
    j.filterp = fp;
    j.force_scalar = scalar;
    Py_BEGIN_ALLOW_THREADS;
    rc = run_job(&j, base, rows, (size_t)w * ps);
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        PyErr_NoMemory();
    }
out:
    PyBuffer_Release(&dst);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The Arrow C data interface (a stable ABI): Pillow exports single-block images through it
 * without copying. L is a uint8 array; RGB a fixed-size list of 4 uint8 per pixel (RGBX). */
struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

PyDoc_STRVAR(resample_arrow_doc,
             "resample_arrow(array, height, width, channels, dst, filter, scalar=False)\n--\n\n"
             "As resample(), reading the pixels of a Pillow L (channels=1) or RGB (channels=3)\n"
             "image of that size straight from the 'arrow_array' capsule of its\n"
             "__arrow_c_array__() (no copy); dst is (H', W') or (H', W', 3) uint8.");

static PyObject *
py_resample_arrow(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"array", "height", "width", "channels", "dst", "filter", "scalar",
                             NULL};
    PyObject *capsule, *dsto;
    int h, w, channels, filter, scalar = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OiiiOi|p:resample_arrow", kwlist, &capsule, &h, &w, &channels, &dsto,
            &filter, &scalar
        )) {
        return NULL;
    }
    const struct filter *fp = filter_for(filter);
    if (!fp) {
        PyErr_Format(PyExc_ValueError, "unsupported resampling filter %d", filter);
        return NULL;
    }
    struct ArrowArray *arr = PyCapsule_GetPointer(capsule, "arrow_array");
    if (!arr) {
        return NULL;
    }
    if (h < 1 || w < 1 || (channels != 1 && channels != 3)) {
        PyErr_SetString(PyExc_ValueError, "bad image size or channels");
        return NULL;
    }
    const int ps = channels == 1 ? 1 : 4;
    const struct ArrowArray *data = arr;
    if (channels == 3) {
        if (arr->release == NULL || arr->n_children != 1 || !arr->children || !arr->children[0] ||
            arr->offset != 0 || arr->length != (int64_t)h * w) {
            PyErr_SetString(PyExc_ValueError, "not a Pillow RGB arrow array of this size");
            return NULL;
        }
        data = arr->children[0];
    }
    if (data->release == NULL || data->n_buffers != 2 || !data->buffers || !data->buffers[1] ||
        data->offset < 0 || data->length < (int64_t)h * w * ps) {
        PyErr_SetString(PyExc_ValueError, "not a Pillow arrow array of this size");
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)data->buffers[1] + data->offset;
    return resample_pillow_pixels(dsto, h, w, channels, ps, fp, scalar, base, NULL);
}

/* The head of Pillow's ImagingMemoryInstance (src/libImaging/Imaging.h, Pillow 13), which
 * Image.getim() hands out as a "Pillow Imaging" capsule. Only used after its fields are checked
 * against what the caller knows of the image; on any mismatch the caller copies via numpy. */
typedef struct {
    int mode, type, depth, bands, xsize, ysize;
    void *palette;
    uint8_t **image8;
    int32_t **image32;
    char **image;
    char *block;
    void *blocks;
    int pixelsize, linesize;
} PillowImagingHead;

PyDoc_STRVAR(resample_pillow_doc,
             "resample_pillow(capsule, height, width, channels, dst, filter, scalar=False)\n--\n\n"
             "As resample_arrow(), from the capsule of Image.getim() (any memory layout, e.g.\n"
             "the several blocks of a large image). ValueError if the capsule does not look\n"
             "like an L/RGB image of that size.");

static PyObject *
py_resample_pillow(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"capsule", "height", "width", "channels", "dst", "filter", "scalar",
                             NULL};
    PyObject *capsule, *dsto;
    int h, w, channels, filter, scalar = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OiiiOi|p:resample_pillow", kwlist, &capsule, &h, &w, &channels, &dsto,
            &filter, &scalar
        )) {
        return NULL;
    }
    const struct filter *fp = filter_for(filter);
    if (!fp) {
        PyErr_Format(PyExc_ValueError, "unsupported resampling filter %d", filter);
        return NULL;
    }
    const PillowImagingHead *im = PyCapsule_GetPointer(capsule, "Pillow Imaging");
    if (!im) {
        return NULL;
    }
    const int ps = channels == 1 ? 1 : 4;
    if ((channels != 1 && channels != 3) || h < 1 || w < 1 || im->type != 0 ||
        im->bands != channels || im->xsize != w || im->ysize != h || im->pixelsize != ps ||
        im->linesize != w * ps || !im->image ||
        (ps == 1 ? (void *)im->image8 : (void *)im->image32) != (void *)im->image) {
        PyErr_SetString(PyExc_ValueError, "not a Pillow L/RGB image of this size");
        return NULL;
    }
    return resample_pillow_pixels(
        dsto, h, w, channels, ps, fp, scalar, NULL, (uint8_t *const *)im->image
    );
}

static int
get_lut(PyObject *o, Py_buffer *b, int C) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (b->itemsize != 4 || !b->format || strcmp(b->format, "f") != 0 ||
        b->len != (Py_ssize_t)C * 256 * 4) {
        PyErr_SetString(PyExc_ValueError, "lut must be float32 (C, 256)");
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static int
check_f32_out(const Py_buffer *b, Py_ssize_t n) {
    if (b->itemsize != 4 || !b->format || strcmp(b->format, "f") != 0 || b->len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "dst must be float32 of the right size");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(lut_chw_doc,
             "lut_chw(src, lut, dst)\n--\n\n"
             "uint8 (h, w, C) (any row and pixel strides, contiguous channels) -> float32\n"
             "C-contiguous `dst` (C, h, w): dst[c, y, x] = lut[c, src[y, x, c]].");

static PyObject *
py_lut_chw(PyObject *self, PyObject *args) {
    PyObject *srco, *luto, *dsto;
    if (!PyArg_ParseTuple(args, "OOO:lut_chw", &srco, &luto, &dsto)) {
        return NULL;
    }
    Py_buffer src, lut, dst;
    if (PyObject_GetBuffer(srco, &src, PyBUF_STRIDED_RO | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (src.itemsize != 1 || (src.format && strcmp(src.format, "B") != 0) || src.ndim != 3 ||
        src.strides[2] != 1 || src.shape[0] > INT_MAX || src.shape[1] > INT_MAX ||
        src.shape[2] < 1 || src.shape[2] > 4) {
        PyErr_SetString(PyExc_ValueError, "src must be uint8 (h, w, C) with contiguous channels");
        PyBuffer_Release(&src);
        return NULL;
    }
    const int C = (int)src.shape[2], h = (int)src.shape[0], w = (int)src.shape[1];
    if (get_lut(luto, &lut, C) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (PyObject_GetBuffer(dsto, &dst, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&lut);
        return NULL;
    }
    PyObject *ret = NULL;
    if (check_f32_out(&dst, (Py_ssize_t)C * h * w) == 0) {
        Py_BEGIN_ALLOW_THREADS;
        lut_chw(src.buf, src.strides[0], src.strides[1], h, w, C, lut.buf, dst.buf);
        Py_END_ALLOW_THREADS;
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&lut);
    PyBuffer_Release(&dst);
    return ret;
}

PyDoc_STRVAR(qwen_patches_doc,
             "qwen_patches(src, lut, dst, patch, merge, temporal)\n--\n\n"
             "C-contiguous uint8 (H, W, 3), H and W multiples of patch*merge -> float32 `dst`\n"
             "(H/patch * W/patch, 3 * temporal * patch**2) in Qwen2-VL's patch order.");

static PyObject *
py_qwen_patches(PyObject *self, PyObject *args) {
    PyObject *srco, *luto, *dsto;
    int p, m, t;
    if (!PyArg_ParseTuple(args, "OOOiii:qwen_patches", &srco, &luto, &dsto, &p, &m, &t)) {
        return NULL;
    }
    if (p < 1 || m < 1 || t < 1) {
        PyErr_SetString(PyExc_ValueError, "patch, merge and temporal must be positive");
        return NULL;
    }
    Py_buffer src, lut, dst;
    if (PyObject_GetBuffer(srco, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    int H, W, C;
    if (check_u8_image(&src, "src", &H, &W, &C) < 0 || C != 3 || src.ndim != 3 ||
        H % (p * m) != 0 || W % (p * m) != 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "src must be (H, W, 3), sides multiples of p*m");
        }
        PyBuffer_Release(&src);
        return NULL;
    }
    if (get_lut(luto, &lut, 3) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (PyObject_GetBuffer(dsto, &dst, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&lut);
        return NULL;
    }
    PyObject *ret = NULL;
    Py_ssize_t n = (Py_ssize_t)(H / p) * (W / p) * 3 * t * p * p;
    if (check_f32_out(&dst, n) == 0) {
        Py_BEGIN_ALLOW_THREADS;
        qwen_patches(src.buf, H, W, lut.buf, p, m, t, dst.buf);
        Py_END_ALLOW_THREADS;
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&lut);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *
py_simd(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(use_avx2 ? "avx2" : "scalar");
}

static PyMethodDef methods[] = {
    {"resample", (PyCFunction)(void (*)(void))py_resample, METH_VARARGS | METH_KEYWORDS,
     resample_doc},
    {"resample_arrow", (PyCFunction)(void (*)(void))py_resample_arrow,
     METH_VARARGS | METH_KEYWORDS, resample_arrow_doc},
    {"resample_pillow", (PyCFunction)(void (*)(void))py_resample_pillow,
     METH_VARARGS | METH_KEYWORDS, resample_pillow_doc},
    {"lut_chw", py_lut_chw, METH_VARARGS, lut_chw_doc},
    {"qwen_patches", py_qwen_patches, METH_VARARGS, qwen_patches_doc},
    {"simd", py_simd, METH_NOARGS, "The kernels in use: 'avx2' or 'scalar'."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *mod) {
#if HM_X86
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "herdsman.multimodal._resample",
    "Pillow-exact uint8 resampling and herdsman's post-resize steps, in C.",
    0,
    methods,
    slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__resample(void) {
    return PyModuleDef_Init(&moduledef);
}
