/* Instant-NGP's hash-grid lookup for CPUs, forward and backward in one pass over the points.
 *
 * PyTorch spends most of a hash-grid step materialising N x L x 8 tensors of indices and weights
 * and walking them op by op; here each point's 8 corners per level are hashed, weighted and
 * summed in registers. The arithmetic is the PyTorch path's (magic3d/fields/encoding.py):
 * the same hash (low bits of corner * prime, xor-ed), floor and ceil corners, weights multiplied
 * x, y then z, so values agree to float rounding of the 8-term sums.
 *
 * Layouts (all contiguous float32): points "N 3" in [0, 1]; table "(L T) F" with level l's rows
 * at l*T; scales "L"; features "N (L F)". T is a power of two. Built by hashgrid_kernel.py with
 * -ffp-contract=off so no product is fused into a differently rounded multiply-add.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_FEATURES 8

static const uint32_t PRIMES[3] = {1u, 2654435761u, 805459861u};

typedef struct {
    uint32_t row[8]; /* table row of each corner, cz fastest */
    float weight[8];
    float w[3][2]; /* per-axis weights of the floor (0) and ceil (1) corner */
} Cell;

static void cell_of(const float *point, float scale, uint32_t mask, uint32_t offset, Cell *c) {
    uint32_t h[3][2];
    for (int a = 0; a < 3; ++a) {
        float s = point[a] * scale;
        /* floorf and ceilf by truncation: calls to libm otherwise on baseline x86-64 (no SSE4.1). */
        float lo = (float)(int64_t)s;
        if (lo > s) lo -= 1.0f;
        float hi = s > lo ? lo + 1.0f : lo;
        float fr = s - lo;
        h[a][0] = ((uint32_t)(int64_t)lo * PRIMES[a]) & mask;
        h[a][1] = ((uint32_t)(int64_t)hi * PRIMES[a]) & mask;
        c->w[a][0] = 1.0f - fr;
        c->w[a][1] = fr;
    }
    int k = 0;
    for (int cx = 0; cx < 2; ++cx)
        for (int cy = 0; cy < 2; ++cy)
            for (int cz = 0; cz < 2; ++cz, ++k) {
                c->row[k] = (h[0][cx] ^ h[1][cy] ^ h[2][cz]) + offset;
                c->weight[k] = (c->w[0][cx] * c->w[1][cy]) * c->w[2][cz];
            }
}

/* Inlined with a constant feature count by the public functions below, so the common case (two
 * features a level, as the paper and every preset use) gets its inner loops unrolled. */
static inline __attribute__((always_inline)) void forward_impl(
    const float *points, const float *table, const float *scales, int64_t n, int32_t levels, int32_t features,
    int64_t table_size, float *out) {
    const uint32_t mask = (uint32_t)(table_size - 1);
    /* Level by level: one level's rows stay in cache while every point reads them. */
    for (int32_t l = 0; l < levels; ++l) {
        for (int64_t i = 0; i < n; ++i) {
            Cell c;
            cell_of(points + i * 3, scales[l], mask, (uint32_t)(l * table_size), &c);
            float acc[MAX_FEATURES] = {0};
            for (int k = 0; k < 8; ++k) {
                const float *row = table + (int64_t)c.row[k] * features;
                for (int f = 0; f < features; ++f) acc[f] += c.weight[k] * row[f];
            }
            memcpy(out + (i * levels + l) * features, acc, sizeof(float) * (size_t)features);
        }
    }
}

static inline __attribute__((always_inline)) void backward_impl(
    const float *points, const float *table, const float *scales, const float *grad_out, int64_t n, int32_t levels,
    int32_t features, int64_t table_size, float *grad_table, float *grad_points) {
    const uint32_t mask = (uint32_t)(table_size - 1);
    if (grad_points) memset(grad_points, 0, sizeof(float) * 3 * (size_t)n);
    for (int32_t l = 0; l < levels; ++l) {
        for (int64_t i = 0; i < n; ++i) {
            Cell c;
            cell_of(points + i * 3, scales[l], mask, (uint32_t)(l * table_size), &c);
            const float *gl = grad_out + (i * levels + l) * features;
            int k = 0;
            for (int cx = 0; cx < 2; ++cx)
                for (int cy = 0; cy < 2; ++cy)
                    for (int cz = 0; cz < 2; ++cz, ++k) {
                        float *row = grad_table + (int64_t)c.row[k] * features;
                        for (int f = 0; f < features; ++f) row[f] += c.weight[k] * gl[f];
                        if (grad_points) {
                            const float *t = table + (int64_t)c.row[k] * features;
                            float dot = 0.0f;
                            for (int f = 0; f < features; ++f) dot += t[f] * gl[f];
                            /* d weight / d frac_a is the other two axes' weights, signed by the corner. */
                            float *gp = grad_points + i * 3;
                            gp[0] += dot * (cx ? 1.0f : -1.0f) * c.w[1][cy] * c.w[2][cz] * scales[l];
                            gp[1] += dot * (cy ? 1.0f : -1.0f) * c.w[0][cx] * c.w[2][cz] * scales[l];
                            gp[2] += dot * (cz ? 1.0f : -1.0f) * c.w[0][cx] * c.w[1][cy] * scales[l];
                        }
                    }
        }
    }
}

void hashgrid_forward(const float *points, const float *table, const float *scales, int64_t n, int32_t levels,
                      int32_t features, int64_t table_size, float *out) {
    if (features == 2)
        forward_impl(points, table, scales, n, levels, 2, table_size, out);
    else
        forward_impl(points, table, scales, n, levels, features, table_size, out);
}

/* grad_table (zeroed by the caller) += d loss / d table; grad_points, when not NULL, is set to
 * d loss / d points (the weights' slopes: floor and ceil have none, as in PyTorch). */
void hashgrid_backward(const float *points, const float *table, const float *scales, const float *grad_out,
                       int64_t n, int32_t levels, int32_t features, int64_t table_size, float *grad_table,
                       float *grad_points) {
    if (features == 2)
        backward_impl(points, table, scales, grad_out, n, levels, 2, table_size, grad_table, grad_points);
    else
        backward_impl(points, table, scales, grad_out, n, levels, features, table_size, grad_table, grad_points);
}
