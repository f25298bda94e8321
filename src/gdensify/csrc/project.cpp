// EWA projection of 3D Gaussians into C pinhole cameras on the CPU: forward and hand-written backward.
//
// The twin of gdensify.render.projection.project (PyTorch, differentiated by autograd), entry for entry:
//   p = R mu + t; culled unless near < z (and z < far when far_cull);
//   J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]], tx = z clamp(x/z, +-1.3 max(cx, W - cx)/fx) (J only);
//   cov2d = T T^T + 0.3 I with T = J R M, M = rotmat(q/|q|) diag(exp(log_scale)); culled unless det > 0, finite;
//   conic = (c, -b, a)/det; radius = ceil(3 sqrt(mid + sqrt(max(radius_floor, mid^2 - det)))), capped at 2^30;
//   culled when the tile rectangle (mean or pixel rule, as projection.tile_rect) is empty;
//   mean2d = (fx x/z + cx, fy y/z + cy); colour = SH(normalize(mu - origin)) + 0.5 clamped at 0.
// Culled entries have zero mean2d and conic and pass no gradient through them; depth (z) and colour are defined
// and differentiable for every entry. Opacities (a sigmoid) stay in PyTorch.
//
// Work is split over fixed groups of 8 Gaussians; each Gaussian loops over the cameras and sums its own gradients
// (no atomics; results do not depend on the thread count). The backward recomputes everything from the inputs
// instead of saving it. The math is written once for a lane type: a scalar (float64; float32 without AVX2 or in
// the last, partial group) or, with AVX2 + FMA, a group of 8 float32 Gaussians at once (branches become selects;
// exp is the rasterizer's ~1 ulp polynomial, every other operation is IEEE and rounds as the scalar one does).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "pool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "exp_avx2.h"
#define GDS_PROJECT_AVX2 1
#else
#define GDS_PROJECT_AVX2 0
#endif

namespace gds_project {

constexpr int TS = 16;                 // tile size (pixels), as the compositing kernel
constexpr double EPS_2D = 0.3;         // pixels^2 added to the diagonal of cov2d
constexpr double FOV_CLAMP = 1.3;      // the J clamp, times the half field of view
constexpr double MAX_RADIUS = 1073741824.0;  // 2^30 pixels
constexpr double NORM_EPS = 1e-12;     // torch.nn.functional.normalize's eps
constexpr int64_t kGrain = 2048;       // Gaussians per parallel chunk

// SH constants (gdensify.sh): degree 0..4.
constexpr double C0 = 0.28209479177387814;
constexpr double C1 = 0.4886025119029199;
constexpr double C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                          0.5462742152960396};
constexpr double C3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                          -0.4570457994644658, 1.445305721320277, -0.5900435899266435};
constexpr double C4[9] = {2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892,
                          0.10578554691520431, -0.6690465435572892, 0.47308734787878004, -1.7701307697799304,
                          0.6258357354491761};

// Y[k], k < (deg + 1)^2, for a unit direction (x, y, z): the expressions of gdensify.sh.sh_basis.
template <typename T>
inline void sh_basis(int deg, T x, T y, T z, T* Y) {
  Y[0] = T(C0);
  if (deg < 1) return;
  Y[1] = -T(C1) * y;
  Y[2] = T(C1) * z;
  Y[3] = -T(C1) * x;
  if (deg < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  Y[4] = T(C2[0]) * xy;
  Y[5] = T(C2[1]) * yz;
  Y[6] = T(C2[2]) * (2 * zz - xx - yy);
  Y[7] = T(C2[3]) * xz;
  Y[8] = T(C2[4]) * (xx - yy);
  if (deg < 3) return;
  Y[9] = T(C3[0]) * y * (3 * xx - yy);
  Y[10] = T(C3[1]) * xy * z;
  Y[11] = T(C3[2]) * y * (4 * zz - xx - yy);
  Y[12] = T(C3[3]) * z * (2 * zz - 3 * xx - 3 * yy);
  Y[13] = T(C3[4]) * x * (4 * zz - xx - yy);
  Y[14] = T(C3[5]) * z * (xx - yy);
  Y[15] = T(C3[6]) * x * (xx - 3 * yy);
  if (deg < 4) return;
  Y[16] = T(C4[0]) * xy * (xx - yy);
  Y[17] = T(C4[1]) * yz * (3 * xx - yy);
  Y[18] = T(C4[2]) * xy * (7 * zz - 1);
  Y[19] = T(C4[3]) * yz * (7 * zz - 3);
  Y[20] = T(C4[4]) * (zz * (35 * zz - 30) + 3);
  Y[21] = T(C4[5]) * xz * (7 * zz - 3);
  Y[22] = T(C4[6]) * (xx - yy) * (7 * zz - 1);
  Y[23] = T(C4[7]) * xz * (xx - 3 * yy);
  Y[24] = T(C4[8]) * (xx * (xx - 3 * yy) - yy * (3 * xx - yy));
}

// (gx, gy, gz) = sum_k gY[k] dY_k/d(x, y, z), the partial derivatives of the expressions above with x, y, z
// independent (they differ from the homogeneous ones only radially, which the normalisation's Jacobian removes).
template <typename T>
inline void sh_basis_vjp(int deg, T x, T y, T z, const T* g, T& gx, T& gy, T& gz) {
  gx = gy = gz = T(0);
  if (deg < 1) return;
  gx += -T(C1) * g[3];
  gy += -T(C1) * g[1];
  gz += T(C1) * g[2];
  if (deg < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  gx += T(C2[0]) * y * g[4] - 2 * T(C2[2]) * x * g[6] + T(C2[3]) * z * g[7] + 2 * T(C2[4]) * x * g[8];
  gy += T(C2[0]) * x * g[4] + T(C2[1]) * z * g[5] - 2 * T(C2[2]) * y * g[6] - 2 * T(C2[4]) * y * g[8];
  gz += T(C2[1]) * y * g[5] + 4 * T(C2[2]) * z * g[6] + T(C2[3]) * x * g[7];
  if (deg < 3) return;
  gx += T(C3[0]) * 6 * x * y * g[9] + T(C3[1]) * y * z * g[10] - T(C3[2]) * 2 * x * y * g[11] -
        T(C3[3]) * 6 * x * z * g[12] + T(C3[4]) * (4 * zz - 3 * xx - yy) * g[13] + T(C3[5]) * 2 * x * z * g[14] +
        T(C3[6]) * 3 * (xx - yy) * g[15];
  gy += T(C3[0]) * 3 * (xx - yy) * g[9] + T(C3[1]) * x * z * g[10] + T(C3[2]) * (4 * zz - xx - 3 * yy) * g[11] -
        T(C3[3]) * 6 * y * z * g[12] - T(C3[4]) * 2 * x * y * g[13] - T(C3[5]) * 2 * y * z * g[14] -
        T(C3[6]) * 6 * x * y * g[15];
  gz += T(C3[1]) * x * y * g[10] + T(C3[2]) * 8 * y * z * g[11] + T(C3[3]) * (6 * zz - 3 * xx - 3 * yy) * g[12] +
        T(C3[4]) * 8 * x * z * g[13] + T(C3[5]) * (xx - yy) * g[14];
  if (deg < 4) return;
  gx += T(C4[0]) * y * (3 * xx - yy) * g[16] + T(C4[1]) * 6 * x * y * z * g[17] +
        T(C4[2]) * y * (7 * zz - 1) * g[18] + T(C4[5]) * z * (7 * zz - 3) * g[21] +
        T(C4[6]) * 2 * x * (7 * zz - 1) * g[22] + T(C4[7]) * 3 * z * (xx - yy) * g[23] +
        T(C4[8]) * 4 * x * (xx - 3 * yy) * g[24];
  gy += T(C4[0]) * x * (xx - 3 * yy) * g[16] + T(C4[1]) * 3 * z * (xx - yy) * g[17] +
        T(C4[2]) * x * (7 * zz - 1) * g[18] + T(C4[3]) * z * (7 * zz - 3) * g[19] -
        T(C4[6]) * 2 * y * (7 * zz - 1) * g[22] - T(C4[7]) * 6 * x * y * z * g[23] +
        T(C4[8]) * 4 * y * (yy - 3 * xx) * g[24];
  gz += T(C4[1]) * y * (3 * xx - yy) * g[17] + T(C4[2]) * 14 * x * y * z * g[18] +
        T(C4[3]) * y * (21 * zz - 3) * g[19] + T(C4[4]) * z * (140 * zz - 60) * g[20] +
        T(C4[5]) * x * (21 * zz - 3) * g[21] + T(C4[6]) * 14 * z * (xx - yy) * g[22] +
        T(C4[7]) * x * (xx - 3 * yy) * g[23];
}


// ------------------------------------------------------------------------------------------------ lanes
// Scalars: masks are bool.
template <typename T>
inline T vsqrt(T a) { return std::sqrt(a); }
template <typename T>
inline T vexp(T a) { return std::exp(a); }
template <typename T>
inline T vmin(T a, T b) { return std::min(a, b); }
template <typename T>
inline T vmax(T a, T b) { return std::max(a, b); }
template <typename T>
inline T vceil(T a) { return std::ceil(a); }
template <typename T>
inline T vfloor(T a) { return std::floor(a); }
template <typename T>
inline T vtrunc(T a) { return std::trunc(a); }
template <typename T>
inline T sel(bool m, T a, T b) { return m ? a : b; }
template <typename T>
inline bool vfinite(T a) { return std::isfinite(a); }
inline bool any(bool m) { return m; }

// Loads and stores of W consecutive Gaussians' values, `stride` scalars apart.
template <typename T>
struct Lanes {
  static constexpr int W = 1;
  static T gather(const T* p, int64_t) { return *p; }
  static void scatter(T* p, int64_t, T v) { *p = v; }
  static void scatter_int(int32_t* p, T v) { *p = int32_t(v); }
  static bool positive(const int32_t* p) { return *p > 0; }
};

#if GDS_PROJECT_AVX2
struct M8 {
  __m256 m;
};
inline M8 operator&(M8 a, M8 b) { return {_mm256_and_ps(a.m, b.m)}; }
inline M8 operator|(M8 a, M8 b) { return {_mm256_or_ps(a.m, b.m)}; }
inline bool any(M8 a) { return _mm256_movemask_ps(a.m) != 0; }

struct F8 {
  __m256 v;
  F8() = default;
  F8(float a) : v(_mm256_set1_ps(a)) {}  // NOLINT: scalars broadcast implicitly, as in the scalar code
  explicit F8(__m256 x) : v(x) {}
};
inline F8 operator+(F8 a, F8 b) { return F8(_mm256_add_ps(a.v, b.v)); }
inline F8 operator-(F8 a, F8 b) { return F8(_mm256_sub_ps(a.v, b.v)); }
inline F8 operator*(F8 a, F8 b) { return F8(_mm256_mul_ps(a.v, b.v)); }
inline F8 operator/(F8 a, F8 b) { return F8(_mm256_div_ps(a.v, b.v)); }
inline F8 operator-(F8 a) { return F8(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))); }
inline F8& operator+=(F8& a, F8 b) { return a = a + b; }
inline M8 operator<(F8 a, F8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
inline M8 operator>(F8 a, F8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
inline M8 operator>=(F8 a, F8 b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ)}; }
inline F8 vsqrt(F8 a) { return F8(_mm256_sqrt_ps(a.v)); }
inline F8 vexp(F8 a) { return F8(gds_exp_avx2(a.v)); }
inline F8 vmin(F8 a, F8 b) { return F8(_mm256_min_ps(a.v, b.v)); }
inline F8 vmax(F8 a, F8 b) { return F8(_mm256_max_ps(a.v, b.v)); }
inline F8 vceil(F8 a) { return F8(_mm256_ceil_ps(a.v)); }
inline F8 vfloor(F8 a) { return F8(_mm256_floor_ps(a.v)); }
inline F8 vtrunc(F8 a) { return F8(_mm256_round_ps(a.v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)); }
inline F8 sel(M8 m, F8 a, F8 b) { return F8(_mm256_blendv_ps(b.v, a.v, m.m)); }
inline M8 vfinite(F8 a) {
  const __m256 mag = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v);
  return {_mm256_cmp_ps(mag, _mm256_set1_ps(std::numeric_limits<float>::infinity()), _CMP_LT_OQ)};
}

template <>
struct Lanes<F8> {
  static constexpr int W = 8;
  static F8 gather(const float* p, int64_t stride) {
    if (stride == 1) return F8(_mm256_loadu_ps(p));
    alignas(32) float b[8];
    for (int l = 0; l < 8; ++l) b[l] = p[l * stride];
    return F8(_mm256_load_ps(b));
  }
  static void scatter(float* p, int64_t stride, F8 v) {
    if (stride == 1) return _mm256_storeu_ps(p, v.v);
    alignas(32) float b[8];
    _mm256_store_ps(b, v.v);
    for (int l = 0; l < 8; ++l) p[l * stride] = b[l];
  }
  static void scatter_int(int32_t* p, F8 v) { _mm256_storeu_si256((__m256i*)p, _mm256_cvttps_epi32(v.v)); }
  static M8 positive(const int32_t* p) {
    const __m256i r = _mm256_loadu_si256((const __m256i*)p);
    return {_mm256_castsi256_ps(_mm256_cmpgt_epi32(r, _mm256_setzero_si256()))};
  }
};
#endif

template <typename V>
using Mask = decltype(V() > V());

// ------------------------------------------------------------------------------------------------ cameras
// One camera's constants (scalars; broadcast into lanes where used).
template <typename S>
struct Cam {
  S R[9], t[3], fx, fy, cx, cy, lim_x, lim_y, origin[3];
};

template <typename S>
std::vector<Cam<S>> load_cameras(const at::Tensor& w2c, const at::Tensor& K, const at::Tensor& origins, int64_t W,
                                 int64_t H) {
  const int64_t C = w2c.size(0);
  std::vector<Cam<S>> cams(static_cast<size_t>(C));
  const S* m = w2c.data_ptr<S>();
  const S* k = K.data_ptr<S>();
  const S* o = origins.data_ptr<S>();
  for (int64_t c = 0; c < C; ++c) {
    Cam<S>& cam = cams[size_t(c)];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = m[16 * c + 4 * i + j];
      cam.t[i] = m[16 * c + 4 * i + 3];
      cam.origin[i] = o[3 * c + i];
    }
    cam.fx = k[9 * c];
    cam.fy = k[9 * c + 4];
    cam.cx = k[9 * c + 2];
    cam.cy = k[9 * c + 5];
    cam.lim_x = S(FOV_CLAMP) * std::max(cam.cx, S(W) - cam.cx) / cam.fx;
    cam.lim_y = S(FOV_CLAMP) * std::max(cam.cy, S(H) - cam.cy) / cam.fy;
  }
  return cams;
}

// ------------------------------------------------------------------------------------------------ per Gaussian
// World-space quantities: the mean, q/max(|q|, eps) (wxyz, as gdensify.gaussians.quat_to_rotmat), its rotation
// matrix Rq (row major), s = exp(log_scale) and M = Rq diag(s).
template <typename V>
struct Gauss {
  V mu[3], qn[4], qnorm, Rq[9], s[3], M[9];
};

template <typename V, typename S>
inline void load_gaussian(const S* mup, const S* qp, const S* lsp, int64_t n, Gauss<V>& g) {
  using L = Lanes<V>;
  for (int j = 0; j < 3; ++j) g.mu[j] = L::gather(mup + 3 * n + j, 3);
  V q[4];
  for (int j = 0; j < 4; ++j) q[j] = L::gather(qp + 4 * n + j, 4);
  g.qnorm = vsqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const V inv = V(1) / vmax(g.qnorm, V(NORM_EPS));
  for (int j = 0; j < 4; ++j) g.qn[j] = q[j] * inv;
  const V w = g.qn[0], x = g.qn[1], y = g.qn[2], z = g.qn[3];
  V* Rq = g.Rq;
  Rq[0] = V(1) - V(2) * (y * y + z * z);
  Rq[1] = V(2) * (x * y - w * z);
  Rq[2] = V(2) * (x * z + w * y);
  Rq[3] = V(2) * (x * y + w * z);
  Rq[4] = V(1) - V(2) * (x * x + z * z);
  Rq[5] = V(2) * (y * z - w * x);
  Rq[6] = V(2) * (x * z - w * y);
  Rq[7] = V(2) * (y * z + w * x);
  Rq[8] = V(1) - V(2) * (x * x + y * y);
  for (int j = 0; j < 3; ++j) g.s[j] = vexp(L::gather(lsp + 3 * n + j, 3));
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.M[3 * i + j] = Rq[3 * i + j] * g.s[j];
}

// Everything about one (camera, Gaussian) the forward computes and the backward needs again.
template <typename V>
struct Ewa {
  using M = Mask<V>;
  V p[3];          // camera-space mean
  V zs;            // z where in depth, else 1 (keeps culled entries finite)
  V J[4];          // J00, J02, J11, J12
  V tx, ty;        // the clamped J inputs
  M clamp_x, clamp_y;
  V P[9];          // R_wc M
  V Tm[6];         // J P (2 x 3)
  V a, b, c, det;  // dilated cov2d entries
  M ok;            // in depth with a positive, finite det
};

template <typename V, typename S>
inline void ewa(const Cam<S>& cam, const Gauss<V>& g, bool far_cull, S near, S far, Ewa<V>& e) {
  const S* R = cam.R;
  for (int i = 0; i < 3; ++i)
    e.p[i] = V(R[3 * i]) * g.mu[0] + V(R[3 * i + 1]) * g.mu[1] + V(R[3 * i + 2]) * g.mu[2] + V(cam.t[i]);
  const V x = e.p[0], y = e.p[1], z = e.p[2];
  Mask<V> in_depth = z > V(near);
  if (far_cull) in_depth = in_depth & (z < V(far));
  e.zs = sel(in_depth, z, V(1));
  const V zs = e.zs;
  const V rx = x / zs, ry = y / zs;
  const V lx = V(cam.lim_x), ly = V(cam.lim_y);
  e.clamp_x = (rx > lx) | (rx < -lx);
  e.clamp_y = (ry > ly) | (ry < -ly);
  e.tx = zs * vmax(vmin(rx, lx), -lx);
  e.ty = zs * vmax(vmin(ry, ly), -ly);
  e.J[0] = V(cam.fx) / zs;
  e.J[1] = V(-cam.fx) * e.tx / (zs * zs);
  e.J[2] = V(cam.fy) / zs;
  e.J[3] = V(-cam.fy) * e.ty / (zs * zs);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k)
      e.P[3 * i + k] = V(R[3 * i]) * g.M[k] + V(R[3 * i + 1]) * g.M[3 + k] + V(R[3 * i + 2]) * g.M[6 + k];
  for (int k = 0; k < 3; ++k) {
    e.Tm[k] = e.J[0] * e.P[k] + e.J[1] * e.P[6 + k];
    e.Tm[3 + k] = e.J[2] * e.P[3 + k] + e.J[3] * e.P[6 + k];
  }
  const V* t0 = e.Tm;
  const V* t1 = e.Tm + 3;
  e.a = (t0[0] * t0[0] + t0[1] * t0[1] + t0[2] * t0[2]) + V(EPS_2D);
  e.b = t0[0] * t1[0] + t0[1] * t1[1] + t0[2] * t1[2];
  e.c = (t1[0] * t1[0] + t1[1] * t1[1] + t1[2] * t1[2]) + V(EPS_2D);
  e.det = e.a * e.c - e.b * e.b;
  e.ok = in_depth & (e.det > V(0)) & vfinite(e.det);
}

// projection.tile_rect: is the rectangle of half-width r around (u, v) non-empty?
template <typename V>
inline Mask<V> rect_nonempty(V u, V v, V r, int tiles_x, int tiles_y, bool pixel_rect) {
  if (pixel_rect) {
    u = u - V(0.5);
    v = v - V(0.5);
  }
  auto rnd = [pixel_rect](V f) { return pixel_rect ? vtrunc(f) : vfloor(f); };
  const V ts = V(TS), ts1 = V(TS - 1), zero = V(0), hx = V(tiles_x), hy = V(tiles_y);
  const V x0 = vmin(vmax(rnd((u - r) / ts), zero), hx), x1 = vmin(vmax(rnd((u + r + ts1) / ts), zero), hx);
  const V y0 = vmin(vmax(rnd((v - r) / ts), zero), hy), y1 = vmin(vmax(rnd((v + r + ts1) / ts), zero), hy);
  return (x1 > x0) & (y1 > y0);
}

// Unit SH view direction from `origin`, and |mu - origin| clamped at eps (as F.normalize).
template <typename V, typename S>
inline void view_dir(const V* mu, const S* origin, V* dir, V& norm) {
  V d[3];
  for (int i = 0; i < 3; ++i) d[i] = mu[i] - V(origin[i]);
  norm = vmax(vsqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), V(NORM_EPS));
  for (int i = 0; i < 3; ++i) dir[i] = d[i] / norm;
}

struct Settings {
  int64_t N, C, KS, W, H;
  int deg, nb, tiles_x, tiles_y;
  double near, far, radius_floor;
  bool far_cull, pixel_rect;
};

// ------------------------------------------------------------------------------------------------ forward
template <typename V, typename S>
inline void forward_block(const Settings& st, const std::vector<Cam<S>>& cams, const S* mup, const S* qp,
                          const S* lsp, const S* shp, int64_t n, S* m2, S* cn, S* dp, int32_t* rp, S* cp) {
  using L = Lanes<V>;
  Gauss<V> g;
  load_gaussian<V>(mup, qp, lsp, n, g);
  const int64_t KS3 = st.KS * 3;
  V sh[25][3];
  for (int k = 0; k < st.nb; ++k)
    for (int ch = 0; ch < 3; ++ch) sh[k][ch] = L::gather(shp + n * KS3 + 3 * k + ch, KS3);
  for (int64_t c = 0; c < st.C; ++c) {
    const Cam<S>& cam = cams[size_t(c)];
    const int64_t i = c * st.N + n;
    Ewa<V> ew;
    ewa<V, S>(cam, g, st.far_cull, S(st.near), S(st.far), ew);
    L::scatter(dp + i, 1, ew.p[2]);
    const V u = V(cam.fx) * ew.p[0] / ew.zs + V(cam.cx);
    const V v = V(cam.fy) * ew.p[1] / ew.zs + V(cam.cy);
    const V mid = V(0.5) * (ew.a + ew.c);
    const V lam = mid + vsqrt(vmax(mid * mid - ew.det, V(st.radius_floor)));
    const V r = vmin(vceil(V(3) * vsqrt(vmax(lam, V(0)))), V(MAX_RADIUS));
    const Mask<V> vis = ew.ok & (r > V(0)) & rect_nonempty<V>(u, v, r, st.tiles_x, st.tiles_y, st.pixel_rect);
    const V zero = V(0);
    L::scatter_int(rp + i, sel(vis, r, zero));
    L::scatter(m2 + 2 * i, 2, sel(vis, u, zero));
    L::scatter(m2 + 2 * i + 1, 2, sel(vis, v, zero));
    L::scatter(cn + 3 * i, 3, sel(vis, ew.c / ew.det, zero));
    L::scatter(cn + 3 * i + 1, 3, sel(vis, -ew.b / ew.det, zero));
    L::scatter(cn + 3 * i + 2, 3, sel(vis, ew.a / ew.det, zero));
    V Y[25];
    if (st.deg > 0) {
      V dir[3], dnorm;
      view_dir<V, S>(g.mu, cam.origin, dir, dnorm);
      sh_basis(st.deg, dir[0], dir[1], dir[2], Y);
    } else {
      Y[0] = V(C0);
    }
    for (int ch = 0; ch < 3; ++ch) {
      V acc = V(0);
      for (int k = 0; k < st.nb; ++k) acc += Y[k] * sh[k][ch];
      L::scatter(cp + 3 * i + ch, 3, vmax(acc + V(0.5), V(0)));
    }
  }
}

// Runs `block(lane, n)` over all N Gaussians in parallel, in fixed groups [8k, 8k + 8): a full group as one F8
// (float32 with AVX2), otherwise one scalar at a time. The groups do not depend on the thread count, so neither do
// the results.
template <typename S, typename F>
inline void over_gaussians(int64_t N, F&& block) {
  constexpr int64_t G = 8;
  at::parallel_for(0, (N + G - 1) / G, kGrain / G, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t n0 = k * G, n1 = std::min(N, n0 + G);
#if GDS_PROJECT_AVX2
      if constexpr (std::is_same_v<S, float>) {
        if (n1 - n0 == G) {
          block(F8(), n0);
          continue;
        }
      }
#endif
      for (int64_t n = n0; n < n1; ++n) block(S(), n);
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward
template <typename V, typename S>
inline void backward_block(const Settings& st, const std::vector<Cam<S>>& cams, const S* mup, const S* qp,
                           const S* lsp, const S* shp, const int32_t* rp, const S* gm2, const S* gcn, const S* gdp,
                           const S* gcp, int64_t n, S* gmu_p, S* gq_p, S* gls_p, S* gsh_p) {
  using L = Lanes<V>;
  Gauss<V> g;
  load_gaussian<V>(mup, qp, lsp, n, g);
  const int64_t KS3 = st.KS * 3;
  V sh[25][3], gsh[25][3];
  for (int k = 0; k < st.nb; ++k)
    for (int ch = 0; ch < 3; ++ch) {
      sh[k][ch] = L::gather(shp + n * KS3 + 3 * k + ch, KS3);
      gsh[k][ch] = V(0);
    }
  const V zero = V(0);
  V gmu[3] = {zero, zero, zero};
  V gM[9] = {zero, zero, zero, zero, zero, zero, zero, zero, zero};
  for (int64_t c = 0; c < st.C; ++c) {
    const Cam<S>& cam = cams[size_t(c)];
    const S* R = cam.R;
    const int64_t i = c * st.N + n;
    V gp[3] = {zero, zero, L::gather(gdp + i, 1)};  // dL/dp (camera space); depth = p.z for every entry
    const Mask<V> vis = L::positive(rp + i);
    if (any(vis)) {
      Ewa<V> ew;
      ewa<V, S>(cam, g, st.far_cull, S(st.near), S(st.far), ew);
      const V x = ew.p[0], y = ew.p[1], z = ew.zs;
      const V fx = V(cam.fx), fy = V(cam.fy);
      const V iz = V(1) / z, iz2 = iz * iz, iz3 = iz2 * iz;
      // mean2d = (fx x/z + cx, fy y/z + cy)
      const V gu = L::gather(gm2 + 2 * i, 2), gv = L::gather(gm2 + 2 * i + 1, 2);
      V g0 = gu * fx * iz, g1 = gv * fy * iz, g2 = -(gu * fx * x + gv * fy * y) * iz2;
      // conic = (c, -b, a) / det
      const V gA = L::gather(gcn + 3 * i, 3), gB = L::gather(gcn + 3 * i + 1, 3), gC = L::gather(gcn + 3 * i + 2, 3);
      const V a = ew.a, bb = ew.b, cc = ew.c, inv = V(1) / ew.det, inv2 = inv * inv;
      const V ga = -gA * cc * cc * inv2 + gB * bb * cc * inv2 + gC * (inv - a * cc * inv2);
      const V gb = V(2) * gA * bb * cc * inv2 - gB * (inv + V(2) * bb * bb * inv2) + V(2) * gC * a * bb * inv2;
      const V gc = gA * (inv - a * cc * inv2) + gB * a * bb * inv2 - gC * a * a * inv2;
      // cov2d = Tm Tm^T (+0.3 I): dL/dTm = (G + G^T) Tm with G = [[ga, gb], [0, gc]]
      const V* t0 = ew.Tm;
      const V* t1 = ew.Tm + 3;
      V gT0[3], gT1[3];
      for (int k = 0; k < 3; ++k) {
        gT0[k] = V(2) * ga * t0[k] + gb * t1[k];
        gT1[k] = gb * t0[k] + V(2) * gc * t1[k];
      }
      // Tm = J P: dL/dJ and dL/dP
      const V* P = ew.P;
      V gJ00 = zero, gJ02 = zero, gJ11 = zero, gJ12 = zero;
      for (int k = 0; k < 3; ++k) {
        gJ00 += gT0[k] * P[k];
        gJ02 += gT0[k] * P[6 + k];
        gJ11 += gT1[k] * P[3 + k];
        gJ12 += gT1[k] * P[6 + k];
      }
      V gP[9];
      for (int k = 0; k < 3; ++k) {
        gP[k] = ew.J[0] * gT0[k];
        gP[3 + k] = ew.J[2] * gT1[k];
        gP[6 + k] = ew.J[1] * gT0[k] + ew.J[3] * gT1[k];
      }
      // P = R M: dL/dM += R^T gP (visible lanes only)
      for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k)
          gM[3 * r + k] += sel(vis, V(R[r]) * gP[k] + V(R[3 + r]) * gP[3 + k] + V(R[6 + r]) * gP[6 + k], zero);
      // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]], tx = z clamp(x/z, +-lim)
      g2 += -(gJ00 * fx + gJ11 * fy) * iz2 + V(2) * (gJ02 * fx * ew.tx + gJ12 * fy * ew.ty) * iz3;
      const V gtx = -gJ02 * fx * iz2, gty = -gJ12 * fy * iz2;
      const V lx = sel(x > zero, V(cam.lim_x), V(-cam.lim_x)), ly = sel(y > zero, V(cam.lim_y), V(-cam.lim_y));
      g2 += sel(ew.clamp_x, gtx * lx, zero) + sel(ew.clamp_y, gty * ly, zero);
      g0 += sel(ew.clamp_x, zero, gtx);
      g1 += sel(ew.clamp_y, zero, gty);
      gp[0] = sel(vis, g0, zero);
      gp[1] = sel(vis, g1, zero);
      gp[2] += sel(vis, g2, zero);
    }
    // p = R mu + t
    for (int j = 0; j < 3; ++j) gmu[j] += V(R[j]) * gp[0] + V(R[3 + j]) * gp[1] + V(R[6 + j]) * gp[2];
    // colour = max(sum_k Y_k sh_k + 0.5, 0)
    V dir[3], dnorm = V(1), Y[25], gY[25];
    if (st.deg > 0) {
      view_dir<V, S>(g.mu, cam.origin, dir, dnorm);
      sh_basis(st.deg, dir[0], dir[1], dir[2], Y);
    } else {
      Y[0] = V(C0);
    }
    V graw[3];
    for (int ch = 0; ch < 3; ++ch) {
      V acc = zero;
      for (int k = 0; k < st.nb; ++k) acc += Y[k] * sh[k][ch];
      graw[ch] = sel(acc + V(0.5) >= zero, L::gather(gcp + 3 * i + ch, 3), zero);
    }
    for (int k = 0; k < st.nb; ++k) {
      gY[k] = zero;
      for (int ch = 0; ch < 3; ++ch) {
        gsh[k][ch] += Y[k] * graw[ch];
        gY[k] += sh[k][ch] * graw[ch];
      }
    }
    if (st.deg > 0) {
      V gdir[3];
      sh_basis_vjp(st.deg, dir[0], dir[1], dir[2], gY, gdir[0], gdir[1], gdir[2]);
      const V dot = gdir[0] * dir[0] + gdir[1] * dir[1] + gdir[2] * dir[2];
      for (int j = 0; j < 3; ++j) gmu[j] += (gdir[j] - dir[j] * dot) / dnorm;
    }
  }
  // M = Rq diag(s): dRq and ds; s = exp(log_scale)
  V G[9];
  for (int r = 0; r < 3; ++r)
    for (int j = 0; j < 3; ++j) G[3 * r + j] = gM[3 * r + j] * g.s[j];
  for (int j = 0; j < 3; ++j)
    L::scatter(gls_p + 3 * n + j, 3, (gM[j] * g.Rq[j] + gM[3 + j] * g.Rq[3 + j] + gM[6 + j] * g.Rq[6 + j]) * g.s[j]);
  const V w = g.qn[0], x = g.qn[1], y = g.qn[2], z = g.qn[3], two = V(2);
  V gqn[4];
  gqn[0] = two * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]);
  gqn[1] = two * (y * G[1] + z * G[2] + y * G[3] - two * x * G[4] - w * G[5] + z * G[6] + w * G[7] - two * x * G[8]);
  gqn[2] = two * (-two * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - two * y * G[8]);
  gqn[3] = two * (-two * z * G[0] - w * G[1] + x * G[2] + w * G[3] - two * z * G[4] + y * G[5] + x * G[6] + y * G[7]);
  // qn = q / max(|q|, eps)
  const V dot = gqn[0] * g.qn[0] + gqn[1] * g.qn[1] + gqn[2] * g.qn[2] + gqn[3] * g.qn[3];
  const Mask<V> normal = g.qnorm > V(NORM_EPS);
  for (int j = 0; j < 4; ++j)
    L::scatter(gq_p + 4 * n + j, 4, sel(normal, (gqn[j] - g.qn[j] * dot) / g.qnorm, gqn[j] / V(NORM_EPS)));
  for (int j = 0; j < 3; ++j) L::scatter(gmu_p + 3 * n + j, 3, gmu[j]);
  for (int k = 0; k < st.KS; ++k)  // coefficients above the active degree get zeros
    for (int ch = 0; ch < 3; ++ch) L::scatter(gsh_p + n * KS3 + 3 * k + ch, KS3, k < st.nb ? gsh[k][ch] : zero);
}

// ------------------------------------------------------------------------------------------------ entry points
void check(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales, const at::Tensor& sh,
           const at::Tensor& w2c, const at::Tensor& K, const at::Tensor& origins, int64_t sh_degree) {
  const auto dt = means.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "gdensify cpu projection: float32 or float64 only");
  for (const at::Tensor* t : {&means, &quats, &log_scales, &sh, &w2c, &K, &origins}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "gdensify cpu projection: contiguous CPU tensors only");
    TORCH_CHECK(t->scalar_type() == dt, "gdensify cpu projection: all inputs must share one dtype");
  }
  const int64_t N = means.size(0), C = w2c.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be (N, 3)");
  TORCH_CHECK(quats.sizes() == at::IntArrayRef({N, 4}), "quats must be (N, 4)");
  TORCH_CHECK(log_scales.sizes() == at::IntArrayRef({N, 3}), "log_scales must be (N, 3)");
  TORCH_CHECK(sh.dim() == 3 && sh.size(0) == N && sh.size(2) == 3, "sh must be (N, K, 3)");
  TORCH_CHECK(sh_degree >= 0 && sh_degree <= 4 && sh.size(1) >= (sh_degree + 1) * (sh_degree + 1),
              "sh_degree must be in [0, 4] with enough coefficients");
  TORCH_CHECK(w2c.sizes() == at::IntArrayRef({C, 4, 4}), "world_to_camera must be (C, 4, 4)");
  TORCH_CHECK(K.sizes() == at::IntArrayRef({C, 3, 3}), "intrinsics must be (C, 3, 3)");
  TORCH_CHECK(origins.sizes() == at::IntArrayRef({C, 3}), "SH origins must be (C, 3)");
  TORCH_CHECK(C * N < (int64_t(1) << 31), "gdensify cpu projection: C*N must fit in int32");
}

Settings settings(const at::Tensor& means, const at::Tensor& sh, const at::Tensor& w2c, int64_t W, int64_t H,
                  double near, double far, bool far_cull, double radius_floor, bool pixel_rect, int64_t deg) {
  Settings st;
  st.N = means.size(0);
  st.C = w2c.size(0);
  st.KS = sh.size(1);
  st.W = W;
  st.H = H;
  st.deg = int(deg);
  st.nb = int((deg + 1) * (deg + 1));
  st.tiles_x = int((W + TS - 1) / TS);
  st.tiles_y = int((H + TS - 1) / TS);
  st.near = near;
  st.far = far;
  st.radius_floor = radius_floor;
  st.far_cull = far_cull;
  st.pixel_rect = pixel_rect;
  return st;
}

template <typename S>
std::vector<at::Tensor> forward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                     const at::Tensor& sh, const at::Tensor& w2c, const at::Tensor& K,
                                     const at::Tensor& origins, const Settings& st) {
  const int64_t N = st.N, C = st.C;
  const auto dt = means.scalar_type();
  // outputs from the rasterizer's block cache (no first-touch page faults on every call)
  at::Tensor means2d = gds::pooled_empty({C, N, 2}, dt), conics = gds::pooled_empty({C, N, 3}, dt);
  at::Tensor depths = gds::pooled_empty({C, N}, dt), colors = gds::pooled_empty({C, N, 3}, dt);
  at::Tensor radii = gds::pooled_empty({C, N}, at::kInt);
  const std::vector<Cam<S>> cams = load_cameras<S>(w2c, K, origins, st.W, st.H);
  const S *mup = means.data_ptr<S>(), *qp = quats.data_ptr<S>(), *lsp = log_scales.data_ptr<S>(),
          *shp = sh.data_ptr<S>();
  S *m2 = means2d.data_ptr<S>(), *cn = conics.data_ptr<S>(), *dp = depths.data_ptr<S>(), *cp = colors.data_ptr<S>();
  int32_t* rp = radii.data_ptr<int32_t>();
  over_gaussians<S>(N, [&](auto lane, int64_t n) {
    forward_block<decltype(lane), S>(st, cams, mup, qp, lsp, shp, n, m2, cn, dp, rp, cp);
  });
  return {means2d, conics, depths, radii, colors};
}

template <typename S>
std::vector<at::Tensor> backward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                      const at::Tensor& sh, const at::Tensor& w2c, const at::Tensor& K,
                                      const at::Tensor& origins, const at::Tensor& radii, const Settings& st,
                                      const at::Tensor& g_means2d, const at::Tensor& g_conics,
                                      const at::Tensor& g_depths, const at::Tensor& g_colors) {
  const int64_t N = st.N;
  const auto dt = means.scalar_type();
  at::Tensor g_means = gds::pooled_empty({N, 3}, dt), g_quats = gds::pooled_empty({N, 4}, dt);
  at::Tensor g_ls = gds::pooled_empty({N, 3}, dt), g_sh = gds::pooled_empty({N, st.KS, 3}, dt);
  const std::vector<Cam<S>> cams = load_cameras<S>(w2c, K, origins, st.W, st.H);
  const S *mup = means.data_ptr<S>(), *qp = quats.data_ptr<S>(), *lsp = log_scales.data_ptr<S>(),
          *shp = sh.data_ptr<S>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  const S *gm2 = g_means2d.data_ptr<S>(), *gcn = g_conics.data_ptr<S>(), *gdp = g_depths.data_ptr<S>(),
          *gcp = g_colors.data_ptr<S>();
  S *gmu_p = g_means.data_ptr<S>(), *gq_p = g_quats.data_ptr<S>(), *gls_p = g_ls.data_ptr<S>(),
    *gsh_p = g_sh.data_ptr<S>();
  over_gaussians<S>(N, [&](auto lane, int64_t n) {
    backward_block<decltype(lane), S>(st, cams, mup, qp, lsp, shp, rp, gm2, gcn, gdp, gcp, n, gmu_p, gq_p, gls_p,
                                      gsh_p);
  });
  return {g_means, g_quats, g_ls, g_sh};
}

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats,
                                        const at::Tensor& log_scales, const at::Tensor& sh, const at::Tensor& w2c,
                                        const at::Tensor& K, const at::Tensor& origins, int64_t W, int64_t H,
                                        double near, double far, bool far_cull, double radius_floor,
                                        bool pixel_rect, int64_t sh_degree) {
  check(means, quats, log_scales, sh, w2c, K, origins, sh_degree);
  TORCH_CHECK(W > 0 && H > 0, "image size must be positive");
  const Settings st = settings(means, sh, w2c, W, H, near, far, far_cull, radius_floor, pixel_rect, sh_degree);
  if (means.scalar_type() == at::kFloat) return forward_impl<float>(means, quats, log_scales, sh, w2c, K, origins, st);
  return forward_impl<double>(means, quats, log_scales, sh, w2c, K, origins, st);
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats,
                                         const at::Tensor& log_scales, const at::Tensor& sh, const at::Tensor& w2c,
                                         const at::Tensor& K, const at::Tensor& origins, const at::Tensor& radii,
                                         int64_t W, int64_t H, double near, double far, bool far_cull,
                                         int64_t sh_degree, const at::Tensor& g_means2d, const at::Tensor& g_conics,
                                         const at::Tensor& g_depths, const at::Tensor& g_colors) {
  check(means, quats, log_scales, sh, w2c, K, origins, sh_degree);
  const int64_t N = means.size(0), C = w2c.size(0);
  const auto dt = means.scalar_type();
  TORCH_CHECK(radii.scalar_type() == at::kInt && radii.is_contiguous() && radii.sizes() == at::IntArrayRef({C, N}),
              "radii must be contiguous int32 (C, N)");
  for (const at::Tensor* t : {&g_means2d, &g_conics, &g_depths, &g_colors})
    TORCH_CHECK(t->scalar_type() == dt && t->is_contiguous() && t->device().is_cpu(),
                "gdensify cpu projection backward: bad gradient tensor");
  TORCH_CHECK(g_means2d.numel() == C * N * 2 && g_conics.numel() == C * N * 3 && g_depths.numel() == C * N &&
                  g_colors.numel() == C * N * 3,
              "gdensify cpu projection backward: gradient sizes");
  const Settings st = settings(means, sh, w2c, W, H, near, far, far_cull, 0.0, false, sh_degree);
  if (dt == at::kFloat)
    return backward_impl<float>(means, quats, log_scales, sh, w2c, K, origins, radii, st, g_means2d, g_conics,
                                g_depths, g_colors);
  return backward_impl<double>(means, quats, log_scales, sh, w2c, K, origins, radii, st, g_means2d, g_conics,
                               g_depths, g_colors);
}

}  // namespace gds_project

// A fragment of the library rasterize.cpp defines: torch.ops.<extension name>.project_{forward,backward}.
TORCH_LIBRARY_FRAGMENT(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &gds_project::project_forward);
  m.def("project_backward", &gds_project::project_backward);
}
