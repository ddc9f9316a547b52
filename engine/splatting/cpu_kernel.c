/* The official 32-channel 3DGS forward's tile binning and per-pixel compositing, for the CPU.
 *
 * Built on first use by cpu_backend.py with the system's C compiler (C99 with the GCC/Clang vector
 * extensions; no Python or torch headers) and called through ctypes, which releases the GIL.
 * Disjoint Gaussian and tile ranges run on torch's OpenMP team (the *_team functions, given its
 * runtime's entry points), else on threads of cpu_backend.py. Inputs are the preprocessed
 * Gaussians of one camera, read through their compositing order (view depth, ties by index). Per
 * (Gaussian, pixel) the arithmetic is the official kernel's float32 code, operation by operation
 * (built without FMA contraction or fast-math), with exp as a polynomial within about 1 ulp; its
 * multiply-adds and the sums of f alpha T, and only those, are FMA where the CPU has it (fmadd).
 *
 * The same library holds the frame compositing of engine/framing.py (gag_composite_rows) and the
 * Winograd convolutions of engine/networks/cpu_layers.py (gag_wino_conv).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 16
#define PREFETCH 8   /* list entries fetched ahead */
#define ALPHA_MAX 0.99f
#define ALPHA_MIN (1.0f / 255.0f)
#define T_MIN 0.0001f
#define MARGIN_REL 1e-4            /* the torch backend's _MARGIN_REL, _MARGIN_PX, _F32_REL, _F32_ABS */
#define MARGIN_PX 1e-3
#define F32_REL (32.0 / 16777216.0)
#define F32_ABS (8.0 / 16777216.0)

#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#else
#define EXPORT
#endif

/* Whether rounding may make power > 0 somewhere: the conic is not safely positive definite. */
static int risky_conic(double a, double b, double c) {
    return !(a > 0.0 && c > 0.0 && b * b < (1.0 - 1e-5) * a * c && isfinite(a) && isfinite(b) && isfinite(c));
}

#if defined(__FMA__) || defined(__AVX512F__) || defined(__ARM_FEATURE_FMA)
#define HAS_FMA 1   /* the build's target has fused multiply-adds (FMAF, fmadd) */
#endif

/* x * y + z rounded once where the build's target has FMA, else rounded twice (scalar fmadd). */
#ifdef HAS_FMA
#define FMAF(x, y, z) __builtin_fmaf(x, y, z)
#else
#define FMAF(x, y, z) ((x) * (y) + (z))
#endif
/* a0 b0 + a1 b1 + a2 b2 as torch's float32 matmul of [N, 3] by [3, 3] computed it on the Xeons
 * checked (a chain of FMAs from a0 b0), and as its batched matmul of 2 x 3 matrices did (plain sums). */
#define DOT3_CHAIN(a0, b0, a1, b1, a2, b2) FMAF(a2, b2, FMAF(a1, b1, (a0) * (b0)))
#define DOT3_SUM(a0, b0, a1, b1, a2, b2) ((a0) * (b0) + (a1) * (b1) + (a2) * (b2))

static inline float max_nan(float a, float b) { return a != a || b != b ? NAN : a > b ? a : b; }   /* torch.maximum */
static inline float min_nan(float a, float b) { return a != a || b != b ? NAN : a < b ? a : b; }   /* torch.minimum */

/* torch.nan_to_num(v, nan=0, posinf=pos) (neginf: the lowest float). */
static inline float nan_to_num(float v, float pos) {
    return v != v ? 0.0f : v == INFINITY ? pos : v == -INFINITY ? -3.40282347e38f : v;
}

/* The tile rect bound trunc(t), clamped to 0 .. grid. */
static inline int32_t rect_bound(float t, int32_t grid) {
    t = nan_to_num(truncf(t), 3.40282347e38f);
    return t < 0.0f ? 0 : t > (float)grid ? grid : (int32_t)t;
}

/* Per-Gaussian projection of Gaussians [i0, i1) for one camera: torch_backend.preprocess (exact)
 * in C, operation by operation in float32 (ndc2Pix in double, as the official kernel): its results
 * are preprocess's bit for bit where torch's matmuls round as DOT3_* (the Xeons this was checked
 * on), and differ by float rounding elsewhere.
 *
 * means [n, 3], covars [n, 3, 3] world; V, P [4, 4] the official view and full projection matrices,
 * row-major (p_view = p V[:3, :3] + V[3, :3]); tanfovx, tanfovy. Writes xy [n, 2] pixels, depth [n]
 * view-space z, conic [n, 3], cov2d [n, 3] (a, b, c, pixels^2, dilated by 0.3), radii [n] (0 =
 * dropped), rect [n, 4] the tile rect x0, y0, x1, y1 (tiles, exclusive) and valid [n] (0 or 1).
 */
EXPORT void gag_preprocess(int32_t i0, int32_t i1, const float *means, const float *covars, const float *V,
                           const float *P, double tanfovx, double tanfovy, int32_t width, int32_t height,
                           float *xy, float *depth, float *conic, float *cov2d, int32_t *radii, int32_t *rect,
                           uint8_t *valid) {
    const float fx = (float)(width / (2.0 * tanfovx)), fy = (float)(height / (2.0 * tanfovy));
    const float limx = 1.3f * (float)tanfovx, limy = 1.3f * (float)tanfovy;
    const int32_t grid_x = (width + TILE - 1) / TILE, grid_y = (height + TILE - 1) / TILE;
    for (int32_t i = i0; i < i1; i++) {
        const float *p = means + 3 * (int64_t)i, *sig = covars + 9 * (int64_t)i;
        float view[3], hom[4], M[2][3], T[2][3], cov[2][2];
        for (int j = 0; j < 3; j++) view[j] = DOT3_CHAIN(p[0], V[j], p[1], V[4 + j], p[2], V[8 + j]) + V[12 + j];
        for (int j = 0; j < 4; j++) hom[j] = DOT3_CHAIN(p[0], P[j], p[1], P[4 + j], p[2], P[8 + j]) + P[12 + j];
        const float w = 1.0f / (hom[3] + 1e-7f), tz = view[2];
        const float tx = min_nan(limx, max_nan(-limx, view[0] / tz)) * tz;
        const float ty = min_nan(limy, max_nan(-limy, view[1] / tz)) * tz;
        const float J[2][3] = {{fx / tz, 0.0f, -(fx * tx) / (tz * tz)}, {0.0f, fy / tz, -(fy * ty) / (tz * tz)}};
        for (int r = 0; r < 2; r++)   /* M = J W^T, cov = M Sigma M^T */
            for (int c = 0; c < 3; c++) M[r][c] = DOT3_CHAIN(J[r][0], V[4 * c], J[r][1], V[4 * c + 1], J[r][2], V[4 * c + 2]);
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 3; c++) T[r][c] = DOT3_SUM(M[r][0], sig[c], M[r][1], sig[3 + c], M[r][2], sig[6 + c]);
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 2; c++) cov[r][c] = DOT3_SUM(T[r][0], M[c][0], T[r][1], M[c][1], T[r][2], M[c][2]);
        const float a = cov[0][0] + 0.3f, b = cov[0][1], c = cov[1][1] + 0.3f;
        const float det = a * c - b * b, det_inv = 1.0f / det, mid = 0.5f * (a + c);
        const float d = mid * mid - det;
        const float disc = sqrtf(d < 0.1f ? 0.1f : d);   /* clamp(min=0.1): NaN stays NaN */
        const float radius = ceilf(3.0f * sqrtf(max_nan(mid + disc, mid - disc)));
        const float x = (float)(((hom[0] * w + 1.0) * width - 1.0) * 0.5);   /* ndc2Pix, in double */
        const float y = (float)(((hom[1] * w + 1.0) * height - 1.0) * 0.5);
        const float rad = nan_to_num(radius, 1e9f);
        const int32_t x0 = rect_bound((x - rad) / TILE, grid_x), y0 = rect_bound((y - rad) / TILE, grid_y);
        const int32_t x1 = rect_bound((((x + rad) + TILE) - 1.0f) / TILE, grid_x);
        const int32_t y1 = rect_bound((((y + rad) + TILE) - 1.0f) / TILE, grid_y);
        const int ok = tz > 0.2f && det != 0.0f && isfinite(radius) && (int64_t)(x1 - x0) * (y1 - y0) != 0;   /* NEAR */
        xy[2 * i] = x;
        xy[2 * i + 1] = y;
        depth[i] = tz;
        conic[3 * i] = c * det_inv;
        conic[3 * i + 1] = -b * det_inv;
        conic[3 * i + 2] = a * det_inv;
        cov2d[3 * i] = a;
        cov2d[3 * i + 1] = b;
        cov2d[3 * i + 2] = c;
        radii[i] = ok ? (int32_t)radius : 0;
        rect[4 * i] = x0;
        rect[4 * i + 1] = y0;
        rect[4 * i + 2] = x1;
        rect[4 * i + 3] = y1;
        valid[i] = (uint8_t)ok;
    }
}

/* Pixel boxes and per-tile list lengths of the Gaussians order[i0 .. i1 - 1].
 *
 * order [k] Gaussian indices in compositing order; xy [n, 2] pixels; conic [n, 3] (a, b, c); cov [n, 3] 2D covariance (a, b, c, pixels^2);
 * opacity [n]; rect [n, 4] the kernel's tile rect x0, y0, x1, y1 (tiles, exclusive). Writes
 * box [n, 4] inclusive pixel box x0, x1, y0, y1: the tile rect clipped to the image and to the
 * bounding box of the ellipse d^T conic d <= 2 ln(255 o) outside which alpha < 1/255 (the whole
 * rect for risky conics), empty when x1 < x0, and adds each Gaussian to the counts
 * [tiles_y * tiles_x] of the tiles its box touches. The ellipse is widened as the torch
 * backend's float32 mode widens it (MARGIN_*, F32_*), against the float32 rounding of power,
 * which grows as 1 / (1 - rho^2) for correlated conics: lim [n] receives its bound on d^T conic d
 * (infinite for risky conics), which gag_render_tiles tests rows against. Returns the number of
 * (Gaussian, tile) pairs.
 */
EXPORT int64_t gag_bin_count(int32_t i0, int32_t i1, const int64_t *order, const float *xy, const float *conic,
                             const float *cov, const float *opacity, const int32_t *rect, int32_t width,
                             int32_t height, int32_t *box, double *lim, int64_t *counts) {
    const int32_t tiles_x = (width + TILE - 1) / TILE;
    int64_t total = 0;
    for (int32_t r = i0; r < i1; r++) {
        const int64_t i = order[r];
        if (r + PREFETCH < i1) {   /* the order jumps through memory: fetch ahead */
            const int64_t h = order[r + PREFETCH];
            __builtin_prefetch(rect + 4 * h);
            __builtin_prefetch(xy + 2 * h);
            __builtin_prefetch(conic + 3 * h);
            __builtin_prefetch(cov + 3 * h);
            __builtin_prefetch(opacity + h);
            __builtin_prefetch(box + 4 * h, 1);
        }
        int32_t *bx = box + 4 * i;
        int32_t x0 = rect[4 * i] * TILE, y0 = rect[4 * i + 1] * TILE;
        int32_t x1 = rect[4 * i + 2] * TILE, y1 = rect[4 * i + 3] * TILE;   /* exclusive */
        const double mx = xy[2 * i], my = xy[2 * i + 1], a = conic[3 * i], b = conic[3 * i + 1], c = conic[3 * i + 2];
        bx[0] = 0; bx[1] = -1; bx[2] = 0; bx[3] = -1;
        lim[i] = INFINITY;
        if (!isfinite(mx) || !isfinite(my) || !(opacity[i] >= ALPHA_MIN)) continue;   /* alpha <= o < 1/255 */
        if (!risky_conic(a, b, c)) {
            const double o255 = (double)opacity[i] * 255.0;
            const double rel = MARGIN_REL + F32_REL / (1.0 - (b / a) * (b / c));
            lim[i] = 2.0 * log(o255 > 1.0 ? o255 : 1.0) * (1.0 + rel) + 1e-6;
            const double va = cov[3 * i] > 0.0f ? cov[3 * i] : 0.0, vc = cov[3 * i + 2] > 0.0f ? cov[3 * i + 2] : 0.0;
            double ex = sqrt(lim[i] * va), ey = sqrt(lim[i] * vc);
            const double margin = MARGIN_PX + F32_ABS * (fmax(fabs(mx), fabs(my)) + fmax(ex, ey));
            ex += margin;
            ey += margin;
            const double lx = ceil(mx - ex), hx = floor(mx + ex) + 1.0, ly = ceil(my - ey), hy = floor(my + ey) + 1.0;
            if (lx > x0) x0 = lx > x1 ? x1 : (int32_t)lx;
            if (hx < x1) x1 = hx < x0 ? x0 : (int32_t)hx;
            if (ly > y0) y0 = ly > y1 ? y1 : (int32_t)ly;
            if (hy < y1) y1 = hy < y0 ? y0 : (int32_t)hy;
        }
        if (x1 > width) x1 = width;
        if (y1 > height) y1 = height;
        if (x0 < 0) x0 = 0;
        if (y0 < 0) y0 = 0;
        if (x1 <= x0 || y1 <= y0) continue;
        bx[0] = x0; bx[1] = x1 - 1; bx[2] = y0; bx[3] = y1 - 1;
        for (int32_t ty = y0 / TILE; ty <= (y1 - 1) / TILE; ty++)
            for (int32_t tx = x0 / TILE; tx <= (x1 - 1) / TILE; tx++) {
                counts[(int64_t)ty * tiles_x + tx]++;
                total++;
            }
    }
    return total;
}

/* Appends the Gaussians order[i0 .. i1 - 1], in that order, to the lists of the tiles their boxes
 * touch (their indices).
 *
 * cursor [tiles]: where each tile's next entry goes in list (advanced); the ranges of several
 * calls do not overlap when each starts at its tile's offset plus the earlier ranges' counts.
 */
EXPORT void gag_bin_fill(int32_t i0, int32_t i1, const int64_t *order, const int32_t *box, int32_t width,
                         int64_t *cursor, int32_t *list) {
    const int32_t tiles_x = (width + TILE - 1) / TILE;
    for (int32_t r = i0; r < i1; r++) {
        const int64_t i = order[r];
        if (r + PREFETCH < i1) __builtin_prefetch(box + 4 * order[r + PREFETCH]);
        const int32_t *bx = box + 4 * i;
        if (bx[1] < bx[0]) continue;
        for (int32_t ty = bx[2] / TILE; ty <= bx[3] / TILE; ty++)
            for (int32_t tx = bx[0] / TILE; tx <= bx[1] / TILE; tx++)
                list[cursor[(int64_t)ty * tiles_x + tx]++] = (int32_t)i;
    }
}

/* A tile row is cut into SEGS segments of LANES pixels, one vector each (GCC/Clang vector
 * extensions, lowered to the SIMD of the machine the kernel is built on: cpu_backend.py builds with
 * -march=native where the compiler takes it). */
#ifndef LANES   /* any width gives the same results, bit for bit: the arithmetic is per lane */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4   /* SSE, NEON */
#endif
#endif
#define SEGS (TILE / LANES)
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

/* x in every lane (x - 0 is x, -0 included, and compiles to a broadcast; x + 0 would be an
 * addition, -0 + 0 being +0). */
static inline vf splat(float x) { return x - (vf){0}; }

static inline vf select(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }

/* Whether any lane of the mask is set: one mask test on AVX-512 and AVX, else the lanes OR-ed 64
 * bits at a time. */
static inline int any(vi mask) {
#if LANES == 16 && defined(__AVX512F__)
    return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0;
#elif LANES == 8 && defined(__AVX__)
    return !_mm256_testz_si256((__m256i)mask, (__m256i)mask);
#else
    uint64_t u[LANES / 2], r = 0;
    memcpy(u, &mask, sizeof u);
    for (int i = 0; i < LANES / 2; i++) r |= u[i];
    return r != 0;
#endif
}

/* a * b + c per lane, rounded once where the build's target has FMA (x86-64 CPUs since 2013, 64-bit
 * ARM): exp_neg's polynomial is a chain of dependent multiply-adds, and with FMA it takes half the
 * instructions (the compositing is 15-20% faster). A build without FMA rounds twice: its alphas
 * differ from FMA builds' in the last bit, here and there. */
#if defined(HAS_FMA) && (defined(__x86_64__) || defined(__i386__))
#if LANES % 16 == 0 && defined(__AVX512F__)
#define FMA_WIDTH 16
typedef __m512 fma_chunk;
#define FMA_CHUNK(a, b, c) _mm512_fmadd_ps(a, b, c)
#elif LANES % 8 == 0
#define FMA_WIDTH 8
typedef __m256 fma_chunk;
#define FMA_CHUNK(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define FMA_WIDTH 4
typedef __m128 fma_chunk;
#define FMA_CHUNK(a, b, c) _mm_fmadd_ps(a, b, c)
#endif
#elif defined(HAS_FMA) && defined(__ARM_NEON)
#include <arm_neon.h>
#define FMA_WIDTH 4
typedef float32x4_t fma_chunk;
#define FMA_CHUNK(a, b, c) vfmaq_f32(c, a, b)
#endif

static inline vf fmadd(vf a, vf b, vf c) {
#ifdef FMA_WIDTH   /* the same bits for any LANES */
    vf r;
    for (int i = 0; i < LANES; i += FMA_WIDTH) {   /* one instruction per FMA_WIDTH lanes */
        fma_chunk x, y, z;
        memcpy(&x, (const float *)&a + i, sizeof x);
        memcpy(&y, (const float *)&b + i, sizeof y);
        memcpy(&z, (const float *)&c + i, sizeof z);
        z = FMA_CHUNK(x, y, z);
        memcpy((float *)&r + i, &z, sizeof z);
    }
    return r;
#else
    return a * b + c;
#endif
}

/* min(hi, max(lo, x)) per lane, NaN staying NaN: one instruction each on x86 (whose min and max
 * return their second operand, x, when one is NaN or both are zeros), else two selects. */
#if (defined(__x86_64__) || defined(__i386__)) && LANES % 16 == 0 && defined(__AVX512F__)
#define CLAMP_WIDTH 16
typedef __m512 clamp_chunk;
#define CLAMP_CHUNK(lo, hi, x) _mm512_min_ps(hi, _mm512_max_ps(lo, x))
#elif (defined(__x86_64__) || defined(__i386__)) && LANES % 8 == 0 && defined(__AVX__)
#define CLAMP_WIDTH 8
typedef __m256 clamp_chunk;
#define CLAMP_CHUNK(lo, hi, x) _mm256_min_ps(hi, _mm256_max_ps(lo, x))
#elif (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
#define CLAMP_WIDTH 4
typedef __m128 clamp_chunk;
#define CLAMP_CHUNK(lo, hi, x) _mm_min_ps(hi, _mm_max_ps(lo, x))
#endif

static inline vf clamp(vf x, vf lo, vf hi) {
#ifdef CLAMP_WIDTH
    vf r;
    for (int i = 0; i < LANES; i += CLAMP_WIDTH) {
        clamp_chunk l, h, v;
        memcpy(&l, (const float *)&lo + i, sizeof l);
        memcpy(&h, (const float *)&hi + i, sizeof h);
        memcpy(&v, (const float *)&x + i, sizeof v);
        v = CLAMP_CHUNK(l, h, v);
        memcpy((float *)&r + i, &v, sizeof v);
    }
    return r;
#else
    return select(x < lo, lo, select(x > hi, hi, x));
#endif
}

/* exp(x) for float x <= 0, per lane, within about 1 ulp (Cody-Waite reduction by ln 2, Cephes'
 * degree-6 polynomial, multiply-adds by fmadd); below -60 it is exp(-60), above 0 it is 1 (lanes
 * the caller skips), NaN stays NaN. Clamped so that o exp(x) for o >= 1e-6 stays a normal float:
 * denormal arithmetic costs a hundred cycles a lane on x86, and alpha < 1/255 (skipped) either way. */
static inline vf exp_neg(vf x) {
    const vf lo = (vf){0} - 60.0f, hi = (vf){0};
    x = clamp(x, lo, hi);
    const vf n = fmadd(x, (vf){0} + 1.44269504088896341f, (vf){0} + 12582912.0f) - 12582912.0f;   /* round(x / ln 2) */
    const vf r = fmadd(n, (vf){0} + 2.12194440e-4f, x - n * 0.693359375f);   /* x - n ln 2, n * 0.693359375 exact */
    vf p = fmadd(r, (vf){0} + 1.9875691500e-4f, (vf){0} + 1.3981999507e-3f);
    p = fmadd(p, r, (vf){0} + 8.3334519073e-3f);
    p = fmadd(p, r, (vf){0} + 4.1665795894e-2f);
    p = fmadd(p, r, (vf){0} + 1.6666665459e-1f);
    p = fmadd(p, r, (vf){0} + 5.0000001201e-1f);
    p = fmadd(p, r * r, r) + 1.0f;
    return p * (vf)((__builtin_convertvector(n, vi) + 127) << 23);   /* times 2^n */
}

#ifndef KEPT   /* any number gives the same results, bit for bit */
#define KEPT 512   /* a segment's weights kept before their sums are taken (most stop before) */
#endif

/* Colour channels summed in registers per sweep over a segment's weights (AVX-512 and 64-bit ARM
 * have 32 vector registers, SSE and AVX 16). */
#if defined(__AVX512F__) || defined(__aarch64__)
#define SWEEP 16
#else
#define SWEEP 8
#endif

/* Channels c0 .. c0 + N - 1 of a segment: sum(colors[id[e], c] w[e]) over its m contributions in
 * order, each term a multiply-add (fmadd), onto 0 (or, resume, onto what the planes of out [..,
 * height, width] hold at pixel at: the same bits as one sum) and written there (lanes pixels).
 * Inlined with a constant N, so the N sums stay in registers. */
static inline void sweep(int N, int32_t c0, int32_t m, const int32_t *id, const vf *w, const float *colors,
                         int32_t channels, float *out, int64_t plane, int64_t at, int32_t lanes, int resume) {
    vf sum[SWEEP];
    for (int i = 0; i < N; i++) {
        sum[i] = (vf){0};
        if (resume) memcpy(&sum[i], out + (c0 + i) * plane + at, (size_t)lanes * sizeof(float));
    }
    for (int32_t e = 0; e < m; e++) {
        if (e + PREFETCH < m) __builtin_prefetch(colors + (int64_t)id[e + PREFETCH] * channels + c0);
        const float *f = colors + (int64_t)id[e] * channels + c0;
        const vf we = w[e];
#pragma GCC unroll 16
        for (int i = 0; i < N; i++) sum[i] = fmadd(splat(f[i]), we, sum[i]);
    }
    for (int i = 0; i < N; i++) memcpy(out + (c0 + i) * plane + at, &sum[i], (size_t)lanes * sizeof(float));
}

/* All the colour channels of a segment (sweep), SWEEP at a time, then 8, 4, 2, 1. */
static void segment_sums(int32_t m, const int32_t *id, const vf *w, const float *colors, int32_t channels, float *out,
                         int64_t plane, int64_t at, int32_t lanes, int resume) {
    int32_t c0 = 0;
    for (; channels - c0 >= SWEEP; c0 += SWEEP) sweep(SWEEP, c0, m, id, w, colors, channels, out, plane, at, lanes, resume);
#if SWEEP > 8
    if (channels - c0 >= 8) { sweep(8, c0, m, id, w, colors, channels, out, plane, at, lanes, resume); c0 += 8; }
#endif
    if (channels - c0 >= 4) { sweep(4, c0, m, id, w, colors, channels, out, plane, at, lanes, resume); c0 += 4; }
    if (channels - c0 >= 2) { sweep(2, c0, m, id, w, colors, channels, out, plane, at, lanes, resume); c0 += 2; }
    if (channels - c0 >= 1) sweep(1, c0, m, id, w, colors, channels, out, plane, at, lanes, resume);
}

#ifndef ROW_TESTS   /* 0: no row_hits (the same results, bit for bit, slower) */
#define ROW_TESTS 1
#endif

/* Doubles and their masks at the vectors' width (LANES / 2 lanes), and half a vf. */
typedef double vd __attribute__((vector_size(LANES * sizeof(float))));
typedef int64_t vl __attribute__((vector_size(LANES * sizeof(float))));
typedef float vhalf __attribute__((vector_size(LANES / 2 * sizeof(float))));

/* Bit i set for the lanes i of the mask that are set. */
static inline uint32_t bits_of(vl mask) {
#if LANES == 16 && defined(__AVX512F__)
    return _mm512_test_epi64_mask((__m512i)mask, (__m512i)mask);
#elif LANES == 8 && defined(__AVX__)
    return (uint32_t)_mm256_movemask_pd((__m256d)mask);
#elif LANES == 4 && defined(__SSE2__)
    return (uint32_t)_mm_movemask_pd((__m128d)mask);
#else
    uint32_t bits = 0;
    for (int i = 0; i < LANES / 2; i++) bits |= (uint32_t)(mask[i] & 1) << i;
    return bits;
#endif
}

/* Bit y set for the tile rows y (pixel row ty0 + y) on which a pixel of columns x0 .. x1 may have
 * alpha >= 1/255: where d^T conic d, least over those columns, is within lim (gag_bin_count's
 * widened bound, which the float32 power of such a pixel meets). d is the kernel's float32 dx, dy:
 * dx = mx - x falls from mx - x0 to mx - x1, as its rounding keeps the order. The least of the
 * convex quadratic over that range is at its ends, or at -b dy / a when that lies between. A row
 * it passes over holds no pixel that adds: whether a row is tested changes no bit of the result. */
static inline uint32_t row_hits(int32_t ty0, float mx, float my, double a, double b, double c, double lim,
                                int32_t x0, int32_t x1) {
    const double lo = (double)(mx - (float)x1), hi = (double)(mx - (float)x0), nba = -b / a;
    uint32_t bits = 0;   /* the misses */
    for (int k = 0; k < TILE; k += LANES / 2) {
        vhalf dyf;
        for (int i = 0; i < LANES / 2; i++) dyf[i] = my - (float)(ty0 + k + i);   /* the kernel's dy */
        const vd dy = __builtin_convertvector(dyf, vd), cdy2 = c * dy * dy, b2dy = 2.0 * b * dy, xs = nba * dy;
        const vl miss = ((a * lo + b2dy) * lo + cdy2 > lim) & ((a * hi + b2dy) * hi + cdy2 > lim)
                        & ((xs < lo) | (xs > hi) | ((a * xs + b2dy) * xs + cdy2 > lim));   /* NaN: not a miss */
        bits |= bits_of(miss) << k;
    }
    return ~bits & ((2u << (TILE - 1)) - 1);
}

/* Composite tiles [t0, t1) front to back, as the kernel's renderCUDA.
 *
 * box, lim, starts and list: gag_bin_count's and gag_bin_fill's (starts [tiles + 1] the lists'
 * offsets). The channels composited are colors [n, channels], then the view depth [n]; out
 * [channels + 1, height, width] receives sum(f alpha T) and final_t [height, width] the
 * transmittance left.
 *
 * A tile row is cut into SEGS segments of LANES pixels. Each Gaussian of the tile's list is
 * evaluated on the segments of its box where a pixel may reach alpha >= 1/255 (row_hits) and has
 * not stopped (pixels outside the box are skipped): alpha, the kernel's step, and for the
 * segments it adds to, its weights alpha T, kept in order; until every pixel of the tile has
 * stopped. Then each segment's colour sums are taken over its weights, SWEEP channels at a time in
 * registers (and whenever KEPT weights are waiting). Returns 0, or -1 when it cannot allocate them.
 */
EXPORT int32_t gag_render_tiles(int32_t t0, int32_t t1, int32_t width, int32_t height, const float *xy,
                                const float *conic, const float *opacity, const int32_t *box, const double *lim,
                                const int64_t *starts, const int32_t *list, const float *colors,
                                const float *depth, int32_t channels, float *out, float *final_t) {
    enum { S = TILE * SEGS };
    const int32_t tiles_x = (width + TILE - 1) / TILE;
    const int64_t plane = (int64_t)width * height;
    /* w [S][KEPT], id [S][KEPT]: each segment's contributions in order, until their sums are taken */
    char *block = malloc((size_t)KEPT * S * (sizeof(vf) + sizeof(int32_t)) + sizeof(vf));
    if (!block) return -1;
    vf *w = (vf *)(((uintptr_t)block + sizeof(vf) - 1) & ~(uintptr_t)(sizeof(vf) - 1));   /* aligned */
    int32_t *id = (int32_t *)(w + KEPT * S);
    /* per segment s = q TILE + y (tile row y, pixels q LANES .. q LANES + LANES - 1 of the row); live:
     * all bits set, 0 once a pixel is done (or outside the image); m: contributions kept; resume:
     * whether sums were taken already (the planes hold them) */
    vf T[S], live[S], z_sum[S];
    int32_t m[S], resume[S];
    vi lane;
    for (int i = 0; i < LANES; i++) lane[i] = i;
    const vf lane_f = __builtin_convertvector(lane, vf);
    for (int32_t t = t0; t < t1; t++) {
        const int32_t tx0 = (t % tiles_x) * TILE, ty0 = (t / tiles_x) * TILE;
        const int32_t tw = width - tx0 < TILE ? width - tx0 : TILE, th = height - ty0 < TILE ? height - ty0 : TILE;
        uint32_t going[SEGS], any_going = 0;   /* going[q] bit y: segment (q, y) has a pixel going on */
        for (int q = 0; q < SEGS; q++) any_going |= going[q] = q * LANES < tw ? (1u << th) - 1 : 0;
        for (int32_t s = 0; s < S; s++) {
            T[s] = splat(1.0f);
            live[s] = (vf)(lane < tw - (s / TILE) * LANES);
            z_sum[s] = (vf){0};
            m[s] = resume[s] = 0;
        }
        for (int64_t j = starts[t]; j < starts[t + 1] && any_going; j++) {
            const int32_t g = list[j];
            if (j + PREFETCH < starts[t + 1]) {   /* lists jump through memory: fetch ahead */
                const int64_t h = list[j + PREFETCH];
                __builtin_prefetch(box + 4 * h);
                __builtin_prefetch(xy + 2 * h);
                __builtin_prefetch(conic + 3 * h);
                __builtin_prefetch(opacity + h);
                __builtin_prefetch(depth + h);
                __builtin_prefetch(lim + h);
            }
            const int32_t *bx = box + 4 * (int64_t)g;
            const int32_t ya = bx[2] > ty0 ? bx[2] - ty0 : 0, yb = bx[3] < ty0 + th - 1 ? bx[3] - ty0 : th - 1;
            const uint32_t box_rows = ((2u << yb) - 1) & ~((1u << ya) - 1);
            const float mx = xy[2 * g], my = xy[2 * g + 1], a = conic[3 * g], b = conic[3 * g + 1], c = conic[3 * g + 2];
            const float o = opacity[g] > 1e-6f ? opacity[g] : 1e-6f;   /* alpha < 1/255 either way */
            const vf z = splat(depth[g]);
            any_going = 0;
            for (int q = 0; q < SEGS; q++) {
                const int32_t x0 = tx0 + q * LANES;
                const int32_t xa = bx[0] > x0 ? bx[0] : x0, xb = bx[1] < x0 + LANES - 1 ? bx[1] : x0 + LANES - 1;
                uint32_t todo = xa <= xb ? box_rows & going[q] : 0;
                if (ROW_TESTS && todo) todo &= row_hits(ty0, mx, my, a, b, c, lim[g], xa, xb);
                const vi in_box = (lane >= bx[0] - x0) & (lane <= bx[1] - x0);
                const vf dx = mx - (lane_f + (float)x0), adx2 = a * dx * dx, bdx = b * dx;
                while (todo) {
                    const int32_t y = __builtin_ctz(todo), s = q * TILE + y;
                    todo &= todo - 1;
                    const float dy = my - (float)(ty0 + y), cdy2 = c * dy * dy;
                    const vf power = -0.5f * (adx2 + cdy2) - bdx * dy;   /* the kernel's expression */
                    vf al = o * exp_neg(power);
                    al = select(al > ALPHA_MAX, splat(ALPHA_MAX), al);
                    /* skipped: outside the box, power > 0 or NaN, alpha < 1/255, pixel done */
                    const vi used = in_box & (power <= 0.0f) & (al >= ALPHA_MIN) & (vi)live[s];
                    /* The kernel's step, without branches: a branch on alpha would be mispredicted
                     * often, and is only decided once its exp is computed. */
                    const vf test_t = T[s] * (1.0f - al);
                    const vi stop = used & (test_t < T_MIN), add = used & ~stop;
                    const vf weight = select(add, al * T[s], (vf){0});
                    T[s] = select(add, test_t, T[s]);
                    id[s * KEPT + m[s]] = g;   /* kept when it adds to a pixel */
                    w[s * KEPT + m[s]] = weight;
                    m[s] += any(add);
                    if (m[s] == KEPT) {   /* full: the sums so far into the planes */
                        segment_sums(KEPT, id + s * KEPT, w + s * KEPT, colors, channels, out, plane,
                                     (int64_t)(ty0 + y) * width + tx0 + q * LANES,
                                     tw - q * LANES < LANES ? tw - q * LANES : LANES, resume[s]);
                        m[s] = 0;
                        resume[s] = 1;
                    }
                    z_sum[s] = fmadd(z, weight, z_sum[s]);   /* + 0 where it does not add */
                    live[s] = select(stop, (vf){0}, live[s]);
                    going[q] &= ~((uint32_t)!any((vi)live[s]) << y);
                }
                any_going |= going[q];
            }
        }
        for (int32_t s = 0; s < S; s++) {   /* the segments' sums into the planes */
            const int32_t y = s % TILE, x0 = (s / TILE) * LANES;
            if (y >= th || x0 >= tw) continue;
            const int64_t at = (int64_t)(ty0 + y) * width + tx0 + x0;
            const int32_t lanes = tw - x0 < LANES ? tw - x0 : LANES;
            memcpy(final_t + at, &T[s], (size_t)lanes * sizeof(float));
            memcpy(out + channels * plane + at, &z_sum[s], (size_t)lanes * sizeof(float));
            segment_sums(m[s], id + s * KEPT, w + s * KEPT, colors, channels, out, plane, at, lanes, resume[s]);
        }
    }
    free(block);
    return 0;
}

/* Frame compositing (engine/framing.py): avatars' crop planes resampled into a frame's render
 * passes and composited front to back, per pixel by depth.
 *
 * Layer l (of n) is planes[l] [sh, sw, 8] (shape[l] = {sh, sw}; a pixel's 8 planes together):
 * linear premultiplied RGB, alpha, depth x alpha, coarse RGB, the crop the network rendered (shrunk
 * beforehand when the frame shows it smaller). It covers the frame pixels box[l] = {xa, ya, xb,
 * yb}. Bilinear, as grid_sample with align_corners=False and zero padding: its box column x (frame
 * column xa + x) samples source column col[x] + colw[x] (col[x] in -1 .. sw - 1, taps outside the
 * crop are 0), its box row y
 * likewise (row, roww); the layers' col and colw follow one another (xb - xa entries each), as do
 * their row and roww (yb - ya each).
 *
 * At each pixel the layers covering it are sorted by depth = (depth x alpha) / alpha where alpha >
 * min_alpha, else infinite (ties keep the layers' order) and composited "over": the planes times
 * the transmittance left, which each layer's alpha multiplies by 1 - alpha. Writes frame rows
 * y_begin .. y_end - 1 (top-down numbering) of the passes, whose rows run bottom-up (Blender's
 * order; the frame is height rows of width pixels): combined [.., 4] RGBA, coarse [.., 3] (when
 * not NULL), depth [..] = the nearest layer's depth, background_depth where it is infinite or no layer covers the
 * pixel (the passes are 0 there). One layer's planes are copied through unchanged (times 1).
 * Returns 0, or -1 when it cannot allocate its row buffers.
 */
typedef float v8f __attribute__((vector_size(8 * sizeof(float))));
typedef float v8u __attribute__((vector_size(8 * sizeof(float)), aligned(sizeof(float))));   /* v8f at any float */

EXPORT int32_t gag_composite_rows(int32_t n, const int64_t *planes, const int32_t *shape, const int32_t *box,
                                  const int32_t *col, const float *colw, const int32_t *row, const float *roww,
                                  int32_t width, int32_t height, int32_t y_begin, int32_t y_end, float min_alpha,
                                  float background_depth, float *combined, float *coarse, float *depth) {
    size_t lines = 0;
    for (int32_t l = 0; l < n; l++) lines += (size_t)shape[2 * l + 1] + 2;
    char *block = malloc((lines + (size_t)n + 1) * sizeof(v8f) + (size_t)n * (2 * sizeof(int64_t) + sizeof(float) + sizeof(int32_t)));
    if (!block) return -1;
    v8f *base = (v8f *)(((uintptr_t)block + sizeof(v8f) - 1) & ~(uintptr_t)(sizeof(v8f) - 1));   /* aligned */
    v8f *sample = base + lines;                                              /* [n] a pixel's samples, nearest first */
    int64_t *line_at = (int64_t *)(sample + n), *col_at = line_at + n;      /* [n] each layer's line and taps */
    float *dist = (float *)(col_at + n);                                     /* [n] the samples' depths */
    int32_t *on = (int32_t *)(dist + n);                                     /* [n] the layers on the row */
    for (int32_t l = 0, c = 0; l < n; l++) {
        line_at[l] = c + 1;   /* one source row, interleaved; zero at -1 and sw */
        col_at[l] = l ? col_at[l - 1] + box[4 * (l - 1) + 2] - box[4 * (l - 1)] : 0;
        c += shape[2 * l + 1] + 2;
        base[line_at[l] - 1] = (v8f){0};
        base[line_at[l] + shape[2 * l + 1]] = (v8f){0};
    }
    for (int32_t y = y_begin; y < y_end; y++) {
        const int64_t out = (int64_t)(height - 1 - y) * width;   /* bottom-up */
        float *cmb = combined + 4 * out, *crs = coarse ? coarse + 3 * out : NULL, *dep = depth + out;
        int32_t x0 = width, x1 = 0, m = 0;   /* the columns the m layers on this row cover */
        for (int32_t l = 0, rows_before = 0; l < n; rows_before += box[4 * l + 3] - box[4 * l + 1], l++) {
            const int32_t *b = box + 4 * l, sh = shape[2 * l], sw = shape[2 * l + 1];
            if (y < b[1] || y >= b[3]) continue;
            on[m++] = l;
            x0 = b[0] < x0 ? b[0] : x0;
            x1 = b[2] > x1 ? b[2] : x1;
            const int32_t *lc = col + col_at[l];
            const int32_t r0 = row[rows_before + y - b[1]];
            const float fy = roww[rows_before + y - b[1]], gy = 1.0f - fy;
            const int32_t c0 = lc[0] < 0 ? 0 : lc[0];   /* the source columns this row reads */
            const int32_t c1 = lc[b[2] - b[0] - 1] + 1 < sw ? lc[b[2] - b[0] - 1] + 1 : sw - 1;
            const int top = r0 >= 0, bottom = r0 + 1 < sh;
            const v8u *p0 = (const v8u *)(uintptr_t)planes[l] + (int64_t)r0 * sw, *p1 = p0 + sw;
            v8f *line = base + line_at[l];
            if (top && bottom) for (int32_t j = c0; j <= c1; j++) line[j] = gy * p0[j] + fy * p1[j];
            else if (top) for (int32_t j = c0; j <= c1; j++) line[j] = gy * p0[j] + 0.0f;
            else for (int32_t j = c0; j <= c1; j++) line[j] = 0.0f + fy * p1[j];
        }
        if (x1 <= x0) x0 = x1 = width;   /* none */
        memset(cmb, 0, 4 * sizeof(float) * (size_t)x0);
        if (crs) memset(crs, 0, 3 * sizeof(float) * (size_t)x0);
        for (int32_t x = 0; x < x0; x++) dep[x] = background_depth;
        if (m == 1) {   /* one layer on the row: its samples as they are (what the loop below gives for k = 1) */
            const int32_t *lc = col + col_at[on[0]];
            const float *lw = colw + col_at[on[0]];
            const v8f *line = base + line_at[on[0]];
            for (int32_t x = x0; x < x1; x++) {
                const float fx = lw[x - x0];
                const v8f v = (1.0f - fx) * line[lc[x - x0]] + fx * line[lc[x - x0] + 1];
                const float d = v[3] > min_alpha ? v[4] / v[3] : INFINITY;
                memcpy(cmb + 4 * x, &v, 4 * sizeof(float));
                if (crs) { crs[3 * x] = v[5]; crs[3 * x + 1] = v[6]; crs[3 * x + 2] = v[7]; }
                dep[x] = d < INFINITY ? d : background_depth;
            }
        } else for (int32_t x = x0; x < x1; x++) {
            int32_t k = 0;
            for (int32_t a = 0; a < m; a++) {
                const int32_t l = on[a], *b = box + 4 * l;
                if (x < b[0] || x >= b[2]) continue;
                const int32_t j = col[col_at[l] + x - b[0]];
                const float fx = colw[col_at[l] + x - b[0]];
                const v8f *line = base + line_at[l];
                const v8f v = (1.0f - fx) * line[j] + fx * line[j + 1];   /* line[-1], line[sw]: 0 */
                const float d = v[3] > min_alpha ? v[4] / v[3] : INFINITY;
                int32_t i = k++;
                for (; i > 0 && dist[i - 1] > d; i--) {   /* insertion: nearest first, ties in layer order */
                    sample[i] = sample[i - 1];
                    dist[i] = dist[i - 1];
                }
                sample[i] = v;
                dist[i] = d;
            }
            v8f acc = k ? sample[0] : (v8f){0};
            float t = k ? 1.0f - sample[0][3] : 1.0f;
            for (int32_t i = 1; i < k; i++) {
                acc += sample[i] * t;
                t *= 1.0f - sample[i][3];
            }
            memcpy(cmb + 4 * x, &acc, 4 * sizeof(float));
            if (crs) { crs[3 * x] = acc[5]; crs[3 * x + 1] = acc[6]; crs[3 * x + 2] = acc[7]; }
            dep[x] = k && dist[0] < INFINITY ? dist[0] : background_depth;
        }
        memset(cmb + 4 * x1, 0, 4 * sizeof(float) * (size_t)(width - x1));
        if (crs) memset(crs + 3 * x1, 0, 3 * sizeof(float) * (size_t)(width - x1));
        for (int32_t x = x1; x < width; x++) dep[x] = background_depth;
    }
    free(block);
    return 0;
}

/* Winograd F(2x2, 3x3) convolutions (engine/networks/cpu_layers.py). A 3x3 convolution (padding 1)
 * of a 2x2 output tile is, in Winograd's transformed domain, 16 elementwise products summed over
 * the input channels: 16 matrix products [tiles, C] x [C, Co]. Per block of WINO_TILES tiles: the
 * input transform B^T d B (B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], rows then columns of the
 * 4x4 input tile), the 16 products against the transformed weights, and the output transform
 * A^T m A (A^T = [1 1 1 0; 0 1 -1 -1]) with the layer's epilogue, so that a block's buffers stay in
 * the cache. The transforms only add and subtract: the float32 error stays that of a direct
 * convolution's sums. The products are the one place in this file where the compiler contracts
 * multiply-adds into FMA (WINO_CONTRACT): each is a sum over the channels in channel order, one
 * output per lane, so any vector width gives the same bits. Tiles are numbered t = ty * (W / 2) +
 * tx; H and W are even; activations are channels-last (NHWC, batch 1). */
#define WINO_TILES 48   /* tiles per block, a multiple of WINO_ROWS */
#define WINO_ROWS 12    /* tiles per register block of the products */
#define WINO_DEPTH 256  /* input channels per pass of the products (the operands stay in L1/L2) */
#define WINO_PAD 16     /* floats between the 16 planes of a block: off multiples of 4 KB, which
                         * would map all 16 to one cache set */
#if defined(__clang__)
#define WINO_CONTRACT _Pragma("clang fp contract(fast)")
#define WINO_CONTRACT_ATTR
#else
#define WINO_CONTRACT
#define WINO_CONTRACT_ATTR __attribute__((optimize("fp-contract=fast")))
#endif

/* One channel's input transform: B^T d B of its 4x4 window d, times s, into the 16 planes (plane
 * floats apart) at o[c]. */
static inline void wino_transform(float d[4][4], float s, float *restrict o, int64_t plane, int32_t c) {
    float u[4][4];   /* B^T d: rows transformed */
    for (int j = 0; j < 4; j++) {
        u[0][j] = d[0][j] - d[2][j];
        u[1][j] = d[1][j] + d[2][j];
        u[2][j] = d[2][j] - d[1][j];
        u[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) {   /* (B^T d) B */
        o[(4 * i) * plane + c] = (u[i][0] - u[i][2]) * s;
        o[(4 * i + 1) * plane + c] = (u[i][1] + u[i][2]) * s;
        o[(4 * i + 2) * plane + c] = (u[i][2] - u[i][1]) * s;
        o[(4 * i + 3) * plane + c] = (u[i][1] - u[i][3]) * s;
    }
}

/* Input transform of tiles [t0, t0 + n) of x [H, W, C] (zero outside), each channel times style[c]
 * (NULL: 1), into rows 0 .. n - 1 of v [16][WINO_TILES][C] (planes plane floats apart). */
static void wino_input(int32_t height, int32_t width, int32_t channels, const float *x, const float *style,
                       const float *zeros, int32_t t0, int32_t n, int64_t plane, float *v) {
    const int32_t tiles_x = width / 2;
    for (int32_t k = 0; k < n; k++) {
        float *restrict o = v + (int64_t)k * channels;
        const int32_t t = t0 + k, ty = t / tiles_x, tx = t % tiles_x;
        const float *restrict p[4][4];   /* the window's pixels */
        for (int i = 0; i < 4; i++) {
            const int32_t y = 2 * ty - 1 + i;
            for (int j = 0; j < 4; j++) {
                const int32_t xx = 2 * tx - 1 + j;
                p[i][j] = y >= 0 && y < height && xx >= 0 && xx < width ? x + ((int64_t)y * width + xx) * channels
                                                                        : zeros;
            }
        }
        _Pragma("GCC ivdep")
        for (int32_t c = 0; c < channels; c++) {
            float d[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) d[i][j] = p[i][j][c];
            wino_transform(d, style ? style[c] : 1.0f, o, plane, c);
        }
    }
}

/* The same for the input bilinearly upsampled x2 first (F.interpolate, align_corners=False): x is
 * [H / 2, W / 2, C] and the tiles are those of the [H, W] upsampled image, computed on the fly. Tile
 * (ty, tx)'s 4x4 window (upsampled rows 2 ty - 1 .. 2 ty + 2, columns likewise) comes from the 3x3
 * source pixels at rows and columns ty - 1 .. ty + 1 (clamped to the image): window row 0 is
 * 3/4 source row 0 + 1/4 row 1, window row 1 1/4 row 0 + 3/4 row 1, rows 2 and 3 the same of
 * source rows 1 and 2 (upsampled row 2 i is 1/4 x[i - 1] + 3/4 x[i], row 2 i + 1 is 3/4 x[i] +
 * 1/4 x[i + 1]); at the borders the weights become F.interpolate's clamped 1 and 0, and 0 for the
 * convolution's zero padding (rows -1 and H); columns likewise. */
static void wino_weights(int32_t i, int32_t last, float wa[4], float wb[4]) {
    const float a[4] = {0.75f, 0.25f, 0.75f, 0.25f}, b[4] = {0.25f, 0.75f, 0.25f, 0.75f};
    for (int k = 0; k < 4; k++) {
        wa[k] = a[k];
        wb[k] = b[k];
    }
    if (i == 0) {   /* upsampled row -1: padding; row 0: x[0] */
        wa[0] = wb[0] = 0.0f;
        wa[1] = 0.0f;
        wb[1] = 1.0f;
    }
    if (i == last) {   /* upsampled row 2 h - 1: x[h - 1]; row 2 h: padding */
        wa[2] = 1.0f;
        wb[2] = 0.0f;
        wa[3] = wb[3] = 0.0f;
    }
}

static void wino_input_up(int32_t height, int32_t width, int32_t channels, const float *x, const float *style,
                          const float *zeros, int32_t t0, int32_t n, int64_t plane, float *v) {
    const int32_t h = height / 2, w = width / 2;
    (void)zeros;   /* the padding is weights 0 here */
    for (int32_t k = 0; k < n; k++) {
        float *restrict o = v + (int64_t)k * channels;
        const int32_t t = t0 + k, ty = t / w, tx = t % w;
        float wra[4], wrb[4], wca[4], wcb[4];
        wino_weights(ty, h - 1, wra, wrb);
        wino_weights(tx, w - 1, wca, wcb);
        const float *restrict s[3][3];   /* the source pixels, clamped */
        for (int i = 0; i < 3; i++) {
            int32_t y = ty - 1 + i, xx;
            y = y < 0 ? 0 : y > h - 1 ? h - 1 : y;
            for (int j = 0; j < 3; j++) {
                xx = tx - 1 + j;
                xx = xx < 0 ? 0 : xx > w - 1 ? w - 1 : xx;
                s[i][j] = x + ((int64_t)y * w + xx) * channels;
            }
        }
        _Pragma("GCC ivdep")
        for (int32_t c = 0; c < channels; c++) {
            float e[4][3], d[4][4];   /* rows upsampled, then columns: the window */
            for (int j = 0; j < 3; j++) {
                const float s0 = s[0][j][c], s1 = s[1][j][c], s2 = s[2][j][c];
                e[0][j] = wra[0] * s0 + wrb[0] * s1;
                e[1][j] = wra[1] * s0 + wrb[1] * s1;
                e[2][j] = wra[2] * s1 + wrb[2] * s2;
                e[3][j] = wra[3] * s1 + wrb[3] * s2;
            }
            for (int i = 0; i < 4; i++) {
                d[i][0] = wca[0] * e[i][0] + wcb[0] * e[i][1];
                d[i][1] = wca[1] * e[i][0] + wcb[1] * e[i][1];
                d[i][2] = wca[2] * e[i][1] + wcb[2] * e[i][2];
                d[i][3] = wca[3] * e[i][1] + wcb[3] * e[i][2];
            }
            wino_transform(d, style ? style[c] : 1.0f, o, plane, c);
        }
    }
}

/* m [WINO_TILES][Co] = v [WINO_TILES][C] @ u [C][Co] (Co a multiple of LANES): register blocks of
 * WINO_ROWS tiles x 2 vectors of outputs, the channels in passes of WINO_DEPTH. */
WINO_CONTRACT_ATTR static void wino_product(int32_t channels, int32_t out_channels, const float *v, const float *u,
                                            float *m) {
    WINO_CONTRACT
    for (int32_t c0 = 0; c0 < channels; c0 += WINO_DEPTH) {
        const int32_t c1 = channels - c0 < WINO_DEPTH ? channels : c0 + WINO_DEPTH;
        for (int32_t j0 = 0; j0 < out_channels; j0 += 2 * LANES) {
            const int two = out_channels - j0 >= 2 * LANES;
            for (int32_t r0 = 0; r0 < WINO_TILES; r0 += WINO_ROWS) {
                vf acc0[WINO_ROWS], acc1[WINO_ROWS];
                float *restrict mo = m + (int64_t)r0 * out_channels + j0;
                for (int i = 0; i < WINO_ROWS; i++) {
                    acc0[i] = acc1[i] = (vf){0};
                    if (c0 > 0) {   /* a later pass adds to the earlier ones */
                        memcpy(&acc0[i], mo + (int64_t)i * out_channels, sizeof(vf));
                        if (two) memcpy(&acc1[i], mo + (int64_t)i * out_channels + LANES, sizeof(vf));
                    }
                }
                const float *restrict a = v + (int64_t)r0 * channels;
                if (two) {
                    for (int32_t c = c0; c < c1; c++) {
                        vf b0, b1;
                        memcpy(&b0, u + (int64_t)c * out_channels + j0, sizeof b0);
                        memcpy(&b1, u + (int64_t)c * out_channels + j0 + LANES, sizeof b1);
                        for (int i = 0; i < WINO_ROWS; i++) {
                            const float s = a[(int64_t)i * channels + c];
                            acc0[i] += s * b0;
                            acc1[i] += s * b1;
                        }
                    }
                } else {
                    for (int32_t c = c0; c < c1; c++) {
                        vf b0;
                        memcpy(&b0, u + (int64_t)c * out_channels + j0, sizeof b0);
                        for (int i = 0; i < WINO_ROWS; i++) acc0[i] += a[(int64_t)i * channels + c] * b0;
                    }
                }
                for (int i = 0; i < WINO_ROWS; i++) {
                    memcpy(mo + (int64_t)i * out_channels, &acc0[i], sizeof(vf));
                    if (two) memcpy(mo + (int64_t)i * out_channels + LANES, &acc1[i], sizeof(vf));
                }
            }
        }
    }
}

/* Output transform of tiles [t0, t0 + n) from m [16][WINO_TILES][Co] (planes plane floats apart)
 * into out [H, W, Co], with the epilogue y * scale[c] + bias[c] + noise[pixel] * noise_weight,
 * then leaky ReLU with slope (when slope >= 0); scale, bias, noise [H, W]: NULL for none. */
static void wino_output(int32_t width, int32_t channels, const float *m, int64_t plane, int32_t t0, int32_t n,
                        const float *scale, const float *bias, const float *noise, float noise_weight, float slope,
                        float *out) {
    const int32_t tiles_x = width / 2;
    for (int32_t k = 0; k < n; k++) {
        const int32_t t = t0 + k, ty = t / tiles_x, tx = t % tiles_x;
        const float *restrict p = m + (int64_t)k * channels;
        float *restrict o[4];
        float nz[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int r = 0; r < 4; r++) {
            const int64_t pixel = (int64_t)(2 * ty + r / 2) * width + 2 * tx + r % 2;
            o[r] = out + pixel * channels;
            if (noise) nz[r] = noise[pixel] * noise_weight;
        }
        _Pragma("GCC ivdep")
        for (int32_t c = 0; c < channels; c++) {
            float z[4][2];   /* m A: columns transformed */
            for (int i = 0; i < 4; i++) {
                const float m0 = p[(4 * i) * plane + c], m1 = p[(4 * i + 1) * plane + c];
                const float m2 = p[(4 * i + 2) * plane + c], m3 = p[(4 * i + 3) * plane + c];
                z[i][0] = m0 + m1 + m2;
                z[i][1] = m1 - m2 - m3;
            }
            const float s = scale ? scale[c] : 1.0f, b = bias ? bias[c] : 0.0f;
            for (int j = 0; j < 2; j++) {   /* A^T (m A), then the epilogue */
                float top = (z[0][j] + z[1][j] + z[2][j]) * s + b + nz[j];
                float bottom = (z[1][j] - z[2][j] - z[3][j]) * s + b + nz[2 + j];
                if (slope >= 0.0f) {
                    top = top > 0.0f ? top : top * slope;
                    bottom = bottom > 0.0f ? bottom : bottom * slope;
                }
                o[j][c] = top;
                o[2 + j][c] = bottom;
            }
        }
    }
}

/* act(conv3x3(x * style, weight) * scale + bias + noise * noise_weight) for output tiles [t0, t1):
 * x [H, W, C] (upsample: [H / 2, W / 2, C], bilinearly upsampled x2 on the way), weight the
 * transformed [16, C, Co] (Co a multiple of 16), out [H, W, Co]; style
 * [C], scale and bias [Co], noise [H, W] or NULL; leaky ReLU with slope where slope >= 0.
 * Returns 0, or 1 when it cannot allocate its block buffers (nothing written then). */
EXPORT int32_t gag_wino_conv(int32_t height, int32_t width, int32_t channels, int32_t out_channels, int32_t upsample,
                             const float *x, const float *weight, const float *style, const float *scale,
                             const float *bias, const float *noise, float noise_weight, float slope, int32_t t0,
                             int32_t t1, float *out) {
    const int64_t vplane = (int64_t)WINO_TILES * channels + WINO_PAD, mplane = (int64_t)WINO_TILES * out_channels + WINO_PAD;
    float *v = malloc(sizeof(float) * (size_t)(16 * vplane + 16 * mplane + channels));
    if (!v) return 1;
    float *m = v + 16 * vplane, *zeros = m + 16 * mplane;
    memset(zeros, 0, sizeof(float) * (size_t)channels);
    for (int32_t b = t0; b < t1; b += WINO_TILES) {
        const int32_t n = t1 - b < WINO_TILES ? t1 - b : WINO_TILES;
        (upsample ? wino_input_up : wino_input)(height, width, channels, x, style, zeros, b, n, vplane, v);
        for (int p = 0; p < 16 && n < WINO_TILES; p++)   /* a part block: its other rows are zeros */
            memset(v + p * vplane + (int64_t)n * channels, 0, sizeof(float) * (size_t)(WINO_TILES - n) * (size_t)channels);
        for (int p = 0; p < 16; p++)
            wino_product(channels, out_channels, v + p * vplane, weight + (int64_t)p * channels * out_channels,
                         m + p * mplane);
        wino_output(width, out_channels, m, mplane, b, n, scale, bias, noise, noise_weight, slope, out);
    }
    free(v);
    return 0;
}

/* OpenMP runtime entry points passed in from cpu_backend.py: torch's own runtime (this file links
 * to no OpenMP library). Its threads spin for a while after each of torch's parallel regions, so
 * work handed to threads of our own would share the cores with them; the team's threads take it. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_query_t)(void);

static void team_run(const void *gomp_parallel, int32_t threads, void (*part)(void *), void *job) {
    gomp_parallel_t parallel;
    memcpy(&parallel, &gomp_parallel, sizeof parallel);   /* object to function pointer, as dlsym's are */
    parallel(part, job, (unsigned)threads, 0);   /* torch's thread count, as its own regions ask for */
}

/* gag_wino_conv over output tiles [t0, t1) split evenly between threads of torch's OpenMP team
 * (team_run). Returns what gag_wino_conv returns (1 if any thread could not allocate). */
struct wino_job {
    omp_query_t thread_num, num_threads;
    int32_t height, width, channels, out_channels, upsample, t0, t1;
    const float *x, *weight, *style, *scale, *bias, *noise;
    float noise_weight, slope;
    float *out;
    volatile int32_t failed;
};

static void wino_job_part(void *data) {
    struct wino_job *j = data;
    const int64_t i = j->thread_num(), n = j->num_threads(), span = (int64_t)j->t1 - j->t0;
    const int32_t a = j->t0 + (int32_t)(span * i / n), b = j->t0 + (int32_t)(span * (i + 1) / n);
    if (b > a && gag_wino_conv(j->height, j->width, j->channels, j->out_channels, j->upsample, j->x, j->weight,
                               j->style, j->scale, j->bias, j->noise, j->noise_weight, j->slope, a, b, j->out))
        j->failed = 1;
}

EXPORT int32_t gag_wino_conv_team(const void *gomp_parallel, const void *thread_num, const void *num_threads,
                                  int32_t threads, int32_t height, int32_t width, int32_t channels, int32_t out_channels,
                                  int32_t upsample, const float *x, const float *weight, const float *style, const float *scale, const float *bias,
                                  const float *noise, float noise_weight, float slope, int32_t t0, int32_t t1,
                                  float *out) {
    struct wino_job job = {0};
    memcpy(&job.thread_num, &thread_num, sizeof job.thread_num);
    memcpy(&job.num_threads, &num_threads, sizeof job.num_threads);
    job.height = height; job.width = width; job.channels = channels; job.out_channels = out_channels;
    job.upsample = upsample;
    job.t0 = t0; job.t1 = t1; job.x = x; job.weight = weight; job.style = style; job.scale = scale;
    job.bias = bias; job.noise = noise; job.noise_weight = noise_weight; job.slope = slope; job.out = out;
    team_run(gomp_parallel, threads, wino_job_part, &job);
    return job.failed;
}

/* The splatting kernels on torch's OpenMP team (team_run). preprocess, bin_count and bin_fill take
 * the n Gaussians (of the order) in `workers` ranges, range w being [n w / workers, n (w + 1) /
 * workers), each thread of the team the ranges w = its number, + the team's size, ...: the same
 * ranges whatever the team's size, as bin_fill's cursor [workers, tiles] rows follow bin_count's
 * counts [workers, tiles] rows. render_tiles takes the tiles in chunks, in turn (tiles differ in
 * cost). */
struct splat_job {
    omp_query_t thread_num, num_threads;
    int32_t workers, n, width, height, tiles, chunk, channels;
    double tanfovx, tanfovy;
    const float *means, *covars, *V, *P, *xy, *conic, *cov, *opacity, *colors, *depth_in;
    const int64_t *order, *starts;
    const int32_t *rect_in, *box_in, *list_in;
    const double *lim_in;
    float *xy_out, *depth, *conic_out, *cov2d, *out, *final_t;
    int32_t *radii, *rect, *box, *list;
    uint8_t *valid;
    double *lim;
    int64_t *counts, *cursor;
    int64_t total;   /* bin_count's pairs (atomic) */
    int32_t next, failed;   /* render_tiles' next tile (atomic), whether a thread could not allocate */
};

/* The ranges of this thread: for (w = first; w < workers; w += step) over [range(w), range(w + 1)). */
#define TEAM_RANGES(j, w)                                                                     \
    for (int32_t w = (j)->thread_num(), step_ = (j)->num_threads(); w < (j)->workers; w += step_)
#define RANGE(j, w) ((int32_t)((int64_t)(j)->n * (w) / (j)->workers))

static void preprocess_part(void *data) {
    struct splat_job *j = data;
    TEAM_RANGES(j, w)
        gag_preprocess(RANGE(j, w), RANGE(j, w + 1), j->means, j->covars, j->V, j->P, j->tanfovx, j->tanfovy, j->width,
                       j->height, j->xy_out, j->depth, j->conic_out, j->cov2d, j->radii, j->rect, j->valid);
}

static void bin_count_part(void *data) {
    struct splat_job *j = data;
    TEAM_RANGES(j, w) {
        const int64_t pairs = gag_bin_count(RANGE(j, w), RANGE(j, w + 1), j->order, j->xy, j->conic, j->cov, j->opacity,
                                            j->rect_in, j->width, j->height, j->box, j->lim,
                                            j->counts + (int64_t)w * j->tiles);
        __atomic_fetch_add(&j->total, pairs, __ATOMIC_RELAXED);
    }
}

static void bin_fill_part(void *data) {
    struct splat_job *j = data;
    TEAM_RANGES(j, w)
        gag_bin_fill(RANGE(j, w), RANGE(j, w + 1), j->order, j->box_in, j->width, j->cursor + (int64_t)w * j->tiles,
                     j->list);
}

static void render_tiles_part(void *data) {
    struct splat_job *j = data;
    for (;;) {
        const int32_t t = __atomic_fetch_add(&j->next, j->chunk, __ATOMIC_RELAXED);
        if (t >= j->tiles) return;
        if (gag_render_tiles(t, t + j->chunk < j->tiles ? t + j->chunk : j->tiles, j->width, j->height, j->xy, j->conic,
                             j->opacity, j->box_in, j->lim_in, j->starts, j->list_in, j->colors, j->depth_in,
                             j->channels, j->out, j->final_t))
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    }
}

static struct splat_job team_job(const void *thread_num, const void *num_threads, int32_t workers, int32_t n) {
    struct splat_job j;
    memset(&j, 0, sizeof j);
    memcpy(&j.thread_num, &thread_num, sizeof j.thread_num);
    memcpy(&j.num_threads, &num_threads, sizeof j.num_threads);
    j.workers = workers;
    j.n = n;
    return j;
}

EXPORT void gag_preprocess_team(const void *gomp_parallel, const void *thread_num, const void *num_threads,
                                int32_t threads, int32_t n, const float *means, const float *covars, const float *V,
                                const float *P, double tanfovx, double tanfovy, int32_t width, int32_t height,
                                float *xy, float *depth, float *conic, float *cov2d, int32_t *radii, int32_t *rect,
                                uint8_t *valid) {
    struct splat_job j = team_job(thread_num, num_threads, threads, n);
    j.means = means; j.covars = covars; j.V = V; j.P = P; j.tanfovx = tanfovx; j.tanfovy = tanfovy;
    j.width = width; j.height = height; j.xy_out = xy; j.depth = depth; j.conic_out = conic; j.cov2d = cov2d;
    j.radii = radii; j.rect = rect; j.valid = valid;
    team_run(gomp_parallel, threads, preprocess_part, &j);
}

EXPORT int64_t gag_bin_count_team(const void *gomp_parallel, const void *thread_num, const void *num_threads,
                                  int32_t threads, int32_t workers, int32_t n, int32_t tiles, const int64_t *order,
                                  const float *xy, const float *conic, const float *cov, const float *opacity,
                                  const int32_t *rect, int32_t width, int32_t height, int32_t *box, double *lim,
                                  int64_t *counts) {
    struct splat_job j = team_job(thread_num, num_threads, workers, n);
    j.tiles = tiles; j.order = order; j.xy = xy; j.conic = conic; j.cov = cov; j.opacity = opacity; j.rect_in = rect;
    j.width = width; j.height = height; j.box = box; j.lim = lim; j.counts = counts;
    team_run(gomp_parallel, threads, bin_count_part, &j);
    return j.total;
}

EXPORT void gag_bin_fill_team(const void *gomp_parallel, const void *thread_num, const void *num_threads,
                              int32_t threads, int32_t workers, int32_t n, int32_t tiles, const int64_t *order,
                              const int32_t *box, int32_t width, int64_t *cursor, int32_t *list) {
    struct splat_job j = team_job(thread_num, num_threads, workers, n);
    j.tiles = tiles; j.order = order; j.box_in = box; j.width = width; j.cursor = cursor; j.list = list;
    team_run(gomp_parallel, threads, bin_fill_part, &j);
}

EXPORT int32_t gag_render_tiles_team(const void *gomp_parallel, const void *thread_num, const void *num_threads,
                                     int32_t threads, int32_t tiles, int32_t chunk, int32_t width, int32_t height,
                                     const float *xy, const float *conic, const float *opacity, const int32_t *box,
                                     const double *lim, const int64_t *starts, const int32_t *list,
                                     const float *colors, const float *depth, int32_t channels, float *out,
                                     float *final_t) {
    struct splat_job j = team_job(thread_num, num_threads, threads, 0);
    j.tiles = tiles; j.chunk = chunk > 0 ? chunk : 1; j.width = width; j.height = height; j.xy = xy; j.conic = conic;
    j.opacity = opacity; j.box_in = box; j.lim_in = lim; j.starts = starts; j.list_in = list; j.colors = colors;
    j.depth_in = depth; j.channels = channels; j.out = out; j.final_t = final_t;
    team_run(gomp_parallel, threads, render_tiles_part, &j);
    return j.failed;
}
