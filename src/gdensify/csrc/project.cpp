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
// Work is split over Gaussians; each loops over the cameras and sums its own gradients (no atomics, results do
// not depend on the thread count). The backward recomputes everything from the inputs instead of saving it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

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

// One camera's constants.
template <typename T>
struct Cam {
  T R[9], t[3], fx, fy, cx, cy, lim_x, lim_y, origin[3];
};

template <typename T>
std::vector<Cam<T>> load_cameras(const at::Tensor& w2c, const at::Tensor& K, const at::Tensor& origins, int64_t W,
                            int64_t H) {
  const int64_t C = w2c.size(0);
  std::vector<Cam<T>> cams(static_cast<size_t>(C));
  const T* m = w2c.data_ptr<T>();
  const T* k = K.data_ptr<T>();
  const T* o = origins.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) {
    Cam<T>& cam = cams[size_t(c)];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = m[16 * c + 4 * i + j];
      cam.t[i] = m[16 * c + 4 * i + 3];
      cam.origin[i] = o[3 * c + i];
    }
    cam.fx = k[9 * c];
    cam.fy = k[9 * c + 4];
    cam.cx = k[9 * c + 2];
    cam.cy = k[9 * c + 5];
    cam.lim_x = T(FOV_CLAMP) * std::max(cam.cx, T(W) - cam.cx) / cam.fx;
    cam.lim_y = T(FOV_CLAMP) * std::max(cam.cy, T(H) - cam.cy) / cam.fy;
  }
  return cams;
}

// The rotation matrix of q / max(|q|, eps) (wxyz), row major, as gdensify.gaussians.quat_to_rotmat.
template <typename T>
inline void rotmat(const T* q, T* Rq, T* qn, T& qnorm) {
  qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T inv = T(1) / std::max(qnorm, T(NORM_EPS));
  for (int i = 0; i < 4; ++i) qn[i] = q[i] * inv;
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  Rq[0] = 1 - 2 * (y * y + z * z);
  Rq[1] = 2 * (x * y - w * z);
  Rq[2] = 2 * (x * z + w * y);
  Rq[3] = 2 * (x * y + w * z);
  Rq[4] = 1 - 2 * (x * x + z * z);
  Rq[5] = 2 * (y * z - w * x);
  Rq[6] = 2 * (x * z - w * y);
  Rq[7] = 2 * (y * z + w * x);
  Rq[8] = 1 - 2 * (x * x + y * y);
}

// Everything the forward computes for one (camera, Gaussian) that the backward needs again.
template <typename T>
struct Ewa {
  T p[3];            // camera-space mean
  T J[4];            // J00, J02, J11, J12
  T tx, ty;          // the clamped J inputs
  bool clamp_x, clamp_y;
  T P[9];            // R_wc M
  T Tm[6];           // J P (2 x 3)
  T a, b, c, det;    // dilated cov2d entries
  bool in_depth, ok;
};

template <typename T>
inline void ewa(const Cam<T>& cam, const T* mu, const T* M, bool far_cull, T near, T far, Ewa<T>& e) {
  const T* R = cam.R;
  for (int i = 0; i < 3; ++i) e.p[i] = R[3 * i] * mu[0] + R[3 * i + 1] * mu[1] + R[3 * i + 2] * mu[2] + cam.t[i];
  const T x = e.p[0], y = e.p[1], z = e.p[2];
  e.in_depth = z > near && (!far_cull || z < far);
  const T zs = e.in_depth ? z : T(1);
  const T rx = x / zs, ry = y / zs;
  e.clamp_x = rx > cam.lim_x || rx < -cam.lim_x;
  e.clamp_y = ry > cam.lim_y || ry < -cam.lim_y;
  e.tx = zs * std::max(std::min(rx, cam.lim_x), -cam.lim_x);
  e.ty = zs * std::max(std::min(ry, cam.lim_y), -cam.lim_y);
  e.J[0] = cam.fx / zs;
  e.J[1] = -cam.fx * e.tx / (zs * zs);
  e.J[2] = cam.fy / zs;
  e.J[3] = -cam.fy * e.ty / (zs * zs);
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) e.P[3 * i + k] = R[3 * i] * M[k] + R[3 * i + 1] * M[3 + k] + R[3 * i + 2] * M[6 + k];
  for (int k = 0; k < 3; ++k) {
    e.Tm[k] = e.J[0] * e.P[k] + e.J[1] * e.P[6 + k];
    e.Tm[3 + k] = e.J[2] * e.P[3 + k] + e.J[3] * e.P[6 + k];
  }
  const T* t0 = e.Tm;
  const T* t1 = e.Tm + 3;
  e.a = (t0[0] * t0[0] + t0[1] * t0[1] + t0[2] * t0[2]) + T(EPS_2D);
  e.b = t0[0] * t1[0] + t0[1] * t1[1] + t0[2] * t1[2];
  e.c = (t1[0] * t1[0] + t1[1] * t1[1] + t1[2] * t1[2]) + T(EPS_2D);
  e.det = e.a * e.c - e.b * e.b;
  e.ok = e.in_depth && e.det > T(0) && std::isfinite(e.det);
}

// projection.tile_rect: is the rectangle of half-width r around (u, v) non-empty?
template <typename T>
inline bool rect_nonempty(T u, T v, T r, int tiles_x, int tiles_y, bool pixel_rect) {
  if (pixel_rect) {
    u -= T(0.5);
    v -= T(0.5);
  }
  auto rnd = [pixel_rect](T f) { return pixel_rect ? std::trunc(f) : std::floor(f); };
  auto clampf = [](T f, int hi) { return std::min(std::max(f, T(0)), T(hi)); };
  const T x0 = clampf(rnd((u - r) / T(TS)), tiles_x), x1 = clampf(rnd((u + r + T(TS - 1)) / T(TS)), tiles_x);
  const T y0 = clampf(rnd((v - r) / T(TS)), tiles_y), y1 = clampf(rnd((v + r + T(TS - 1)) / T(TS)), tiles_y);
  return x1 > x0 && y1 > y0;
}

// The world-space Gaussian's M = rotmat(q) diag(exp(log_scale)).
template <typename T>
inline void gaussian_m(const T* q, const T* ls, T* M, T* Rq, T* qn, T& qnorm, T* s) {
  rotmat(q, Rq, qn, qnorm);
  for (int j = 0; j < 3; ++j) s[j] = std::exp(ls[j]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[3 * i + j] = Rq[3 * i + j] * s[j];
}

// Unit SH view direction, and the norm of mu - origin (clamped at eps as F.normalize).
template <typename T>
inline void view_dir(const T* mu, const T* origin, T* d, T* dir, T& norm) {
  for (int i = 0; i < 3; ++i) d[i] = mu[i] - origin[i];
  norm = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), T(NORM_EPS));
  for (int i = 0; i < 3; ++i) dir[i] = d[i] / norm;
}

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

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                     const at::Tensor& sh, const at::Tensor& w2c, const at::Tensor& K,
                                     const at::Tensor& origins, int64_t W, int64_t H, double near, double far,
                                     bool far_cull, double radius_floor, bool pixel_rect, int64_t deg) {
  const int64_t N = means.size(0), C = w2c.size(0), KS = sh.size(1);
  const int nb = int((deg + 1) * (deg + 1));
  const auto opts = at::TensorOptions().dtype(means.scalar_type());
  at::Tensor means2d = at::empty({C, N, 2}, opts), conics = at::empty({C, N, 3}, opts);
  at::Tensor depths = at::empty({C, N}, opts), colors = at::empty({C, N, 3}, opts);
  at::Tensor radii = at::empty({C, N}, opts.dtype(at::kInt));
  const std::vector<Cam<T>> cams = load_cameras<T>(w2c, K, origins, W, H);
  const int tiles_x = int((W + TS - 1) / TS), tiles_y = int((H + TS - 1) / TS);
  const T* mup = means.data_ptr<T>();
  const T* qp = quats.data_ptr<T>();
  const T* lsp = log_scales.data_ptr<T>();
  const T* shp = sh.data_ptr<T>();
  T *m2 = means2d.data_ptr<T>(), *cn = conics.data_ptr<T>(), *dp = depths.data_ptr<T>(), *cp = colors.data_ptr<T>();
  int32_t* rp = radii.data_ptr<int32_t>();
  const T tnear = T(near), tfar = T(far), floor_ = T(radius_floor);
  at::parallel_for(0, N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const T* mu = mup + 3 * n;
      T M[9], Rq[9], qn[4], qnorm, s[3];
      gaussian_m(qp + 4 * n, lsp + 3 * n, M, Rq, qn, qnorm, s);
      const T* shn = shp + n * KS * 3;
      for (int64_t c = 0; c < C; ++c) {
        const Cam<T>& cam = cams[size_t(c)];
        const int64_t i = c * N + n;
        Ewa<T> ew;
        ewa(cam, mu, M, far_cull, tnear, tfar, ew);
        dp[i] = ew.p[2];
        int32_t radius = 0;
        T u = 0, v = 0;
        if (ew.ok) {
          const T zs = ew.p[2];
          u = cam.fx * ew.p[0] / zs + cam.cx;
          v = cam.fy * ew.p[1] / zs + cam.cy;
          const T mid = T(0.5) * (ew.a + ew.c);
          const T lam = mid + std::sqrt(std::max(mid * mid - ew.det, floor_));
          T r = std::ceil(T(3) * std::sqrt(std::max(lam, T(0))));
          r = std::min(r, T(MAX_RADIUS));
          if (r > T(0) && rect_nonempty(u, v, r, tiles_x, tiles_y, pixel_rect)) radius = int32_t(r);
        }
        rp[i] = radius;
        if (radius > 0) {
          m2[2 * i] = u;
          m2[2 * i + 1] = v;
          cn[3 * i] = ew.c / ew.det;
          cn[3 * i + 1] = -ew.b / ew.det;
          cn[3 * i + 2] = ew.a / ew.det;
        } else {
          m2[2 * i] = m2[2 * i + 1] = T(0);
          cn[3 * i] = cn[3 * i + 1] = cn[3 * i + 2] = T(0);
        }
        T Y[25];
        if (deg > 0) {
          T d[3], dir[3], dnorm;
          view_dir(mu, cam.origin, d, dir, dnorm);
          sh_basis(int(deg), dir[0], dir[1], dir[2], Y);
        } else {
          Y[0] = T(C0);
        }
        for (int ch = 0; ch < 3; ++ch) {
          T acc = 0;
          for (int k = 0; k < nb; ++k) acc += Y[k] * shn[3 * k + ch];
          cp[3 * i + ch] = std::max(acc + T(0.5), T(0));
        }
      }
    }
  });
  return {means2d, conics, depths, radii, colors};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& log_scales,
                                      const at::Tensor& sh, const at::Tensor& w2c, const at::Tensor& K,
                                      const at::Tensor& origins, const at::Tensor& radii, int64_t W, int64_t H,
                                      double near, double far, bool far_cull, int64_t deg,
                                      const at::Tensor& g_means2d, const at::Tensor& g_conics,
                                      const at::Tensor& g_depths, const at::Tensor& g_colors) {
  const int64_t N = means.size(0), C = w2c.size(0), KS = sh.size(1);
  const int nb = int((deg + 1) * (deg + 1));
  const auto opts = at::TensorOptions().dtype(means.scalar_type());
  at::Tensor g_means = at::empty({N, 3}, opts), g_quats = at::empty({N, 4}, opts);
  at::Tensor g_ls = at::empty({N, 3}, opts), g_sh = at::zeros({N, KS, 3}, opts);
  const std::vector<Cam<T>> cams = load_cameras<T>(w2c, K, origins, W, H);
  const T* mup = means.data_ptr<T>();
  const T* qp = quats.data_ptr<T>();
  const T* lsp = log_scales.data_ptr<T>();
  const T* shp = sh.data_ptr<T>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  const T *gm2 = g_means2d.data_ptr<T>(), *gcn = g_conics.data_ptr<T>(), *gdp = g_depths.data_ptr<T>(),
          *gcp = g_colors.data_ptr<T>();
  T *gmu_p = g_means.data_ptr<T>(), *gq_p = g_quats.data_ptr<T>(), *gls_p = g_ls.data_ptr<T>(),
    *gsh_p = g_sh.data_ptr<T>();
  const T tnear = T(near), tfar = T(far);
  at::parallel_for(0, N, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const T* mu = mup + 3 * n;
      T M[9], Rq[9], qn[4], qnorm, s[3];
      gaussian_m(qp + 4 * n, lsp + 3 * n, M, Rq, qn, qnorm, s);
      const T* shn = shp + n * KS * 3;
      T* gshn = gsh_p + n * KS * 3;
      T gmu[3] = {0, 0, 0}, gM[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t c = 0; c < C; ++c) {
        const Cam<T>& cam = cams[size_t(c)];
        const T* R = cam.R;
        const int64_t i = c * N + n;
        T gp[3] = {0, 0, gdp[i]};  // dL/dp (camera space); depth = p.z for every entry
        if (rp[i] > 0) {
          Ewa<T> ew;
          ewa(cam, mu, M, far_cull, tnear, tfar, ew);
          const T x = ew.p[0], y = ew.p[1], z = ew.p[2];
          const T iz = T(1) / z, iz2 = iz * iz, iz3 = iz2 * iz;
          // mean2d
          const T gu = gm2[2 * i], gv = gm2[2 * i + 1];
          gp[0] += gu * cam.fx * iz;
          gp[1] += gv * cam.fy * iz;
          gp[2] += -(gu * cam.fx * x + gv * cam.fy * y) * iz2;
          // conic = (c, -b, a) / det
          const T gA = gcn[3 * i], gB = gcn[3 * i + 1], gC = gcn[3 * i + 2];
          const T a = ew.a, bb = ew.b, cc = ew.c, inv = T(1) / ew.det, inv2 = inv * inv;
          const T ga = -gA * cc * cc * inv2 + gB * bb * cc * inv2 + gC * (inv - a * cc * inv2);
          const T gb = 2 * gA * bb * cc * inv2 - gB * (inv + 2 * bb * bb * inv2) + 2 * gC * a * bb * inv2;
          const T gc = gA * (inv - a * cc * inv2) + gB * a * bb * inv2 - gC * a * a * inv2;
          // cov2d = Tm Tm^T (+0.3 I): dL/dTm = (G + G^T) Tm with G = [[ga, gb], [0, gc]]
          const T* t0 = ew.Tm;
          const T* t1 = ew.Tm + 3;
          T gT0[3], gT1[3];
          for (int k = 0; k < 3; ++k) {
            gT0[k] = 2 * ga * t0[k] + gb * t1[k];
            gT1[k] = gb * t0[k] + 2 * gc * t1[k];
          }
          // Tm = J P: dL/dJ and dL/dP
          const T* P = ew.P;
          T gJ00 = 0, gJ02 = 0, gJ11 = 0, gJ12 = 0;
          for (int k = 0; k < 3; ++k) {
            gJ00 += gT0[k] * P[k];
            gJ02 += gT0[k] * P[6 + k];
            gJ11 += gT1[k] * P[3 + k];
            gJ12 += gT1[k] * P[6 + k];
          }
          T gP[9];
          for (int k = 0; k < 3; ++k) {
            gP[k] = ew.J[0] * gT0[k];
            gP[3 + k] = ew.J[2] * gT1[k];
            gP[6 + k] = ew.J[1] * gT0[k] + ew.J[3] * gT1[k];
          }
          // P = R M: dL/dM += R^T gP
          for (int r = 0; r < 3; ++r)
            for (int k = 0; k < 3; ++k) gM[3 * r + k] += R[r] * gP[k] + R[3 + r] * gP[3 + k] + R[6 + r] * gP[6 + k];
          // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]], tx = z clamp(x/z, +-lim)
          gp[2] += -(gJ00 * cam.fx + gJ11 * cam.fy) * iz2 + 2 * (gJ02 * cam.fx * ew.tx + gJ12 * cam.fy * ew.ty) * iz3;
          const T gtx = -gJ02 * cam.fx * iz2, gty = -gJ12 * cam.fy * iz2;
          if (ew.clamp_x)
            gp[2] += gtx * (x > 0 ? cam.lim_x : -cam.lim_x);
          else
            gp[0] += gtx;
          if (ew.clamp_y)
            gp[2] += gty * (y > 0 ? cam.lim_y : -cam.lim_y);
          else
            gp[1] += gty;
        }
        // p = R mu + t
        for (int j = 0; j < 3; ++j) gmu[j] += R[j] * gp[0] + R[3 + j] * gp[1] + R[6 + j] * gp[2];
        // colour = max(sum_k Y_k sh_k + 0.5, 0)
        T d[3], dir[3], dnorm = T(1), Y[25], gY[25];
        if (deg > 0) {
          view_dir(mu, cam.origin, d, dir, dnorm);
          sh_basis(int(deg), dir[0], dir[1], dir[2], Y);
        } else {
          Y[0] = T(C0);
        }
        T graw[3];
        bool any = false;
        for (int ch = 0; ch < 3; ++ch) {
          T acc = 0;
          for (int k = 0; k < nb; ++k) acc += Y[k] * shn[3 * k + ch];
          graw[ch] = acc + T(0.5) >= T(0) ? gcp[3 * i + ch] : T(0);
          any = any || graw[ch] != T(0);
        }
        if (!any) continue;
        for (int k = 0; k < nb; ++k) {
          gY[k] = 0;
          for (int ch = 0; ch < 3; ++ch) {
            gshn[3 * k + ch] += Y[k] * graw[ch];
            gY[k] += shn[3 * k + ch] * graw[ch];
          }
        }
        if (deg > 0) {
          T gdir[3];
          sh_basis_vjp(int(deg), dir[0], dir[1], dir[2], gY, gdir[0], gdir[1], gdir[2]);
          const T dot = gdir[0] * dir[0] + gdir[1] * dir[1] + gdir[2] * dir[2];
          for (int j = 0; j < 3; ++j) gmu[j] += (gdir[j] - dir[j] * dot) / dnorm;
        }
      }
      // M = Rq diag(s): dRq and ds; s = exp(log_scale)
      T gRq[9];
      for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 3; ++j) gRq[3 * r + j] = gM[3 * r + j] * s[j];
      for (int j = 0; j < 3; ++j)
        gls_p[3 * n + j] = (gM[j] * Rq[j] + gM[3 + j] * Rq[3 + j] + gM[6 + j] * Rq[6 + j]) * s[j];
      const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
      const T* G = gRq;
      T gqn[4];
      gqn[0] = 2 * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]);
      gqn[1] = 2 * (y * G[1] + z * G[2] + y * G[3] - 2 * x * G[4] - w * G[5] + z * G[6] + w * G[7] - 2 * x * G[8]);
      gqn[2] = 2 * (-2 * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - 2 * y * G[8]);
      gqn[3] = 2 * (-2 * z * G[0] - w * G[1] + x * G[2] + w * G[3] - 2 * z * G[4] + y * G[5] + x * G[6] + y * G[7]);
      // qn = q / max(|q|, eps)
      if (qnorm > T(NORM_EPS)) {
        const T dot = gqn[0] * qn[0] + gqn[1] * qn[1] + gqn[2] * qn[2] + gqn[3] * qn[3];
        for (int j = 0; j < 4; ++j) gq_p[4 * n + j] = (gqn[j] - qn[j] * dot) / qnorm;
      } else {
        for (int j = 0; j < 4; ++j) gq_p[4 * n + j] = gqn[j] / T(NORM_EPS);
      }
      for (int j = 0; j < 3; ++j) gmu_p[3 * n + j] = gmu[j];
    }
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
  if (means.scalar_type() == at::kFloat)
    return forward_impl<float>(means, quats, log_scales, sh, w2c, K, origins, W, H, near, far, far_cull,
                               radius_floor, pixel_rect, sh_degree);
  return forward_impl<double>(means, quats, log_scales, sh, w2c, K, origins, W, H, near, far, far_cull,
                              radius_floor, pixel_rect, sh_degree);
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
  if (dt == at::kFloat)
    return backward_impl<float>(means, quats, log_scales, sh, w2c, K, origins, radii, W, H, near, far, far_cull,
                                sh_degree, g_means2d, g_conics, g_depths, g_colors);
  return backward_impl<double>(means, quats, log_scales, sh, w2c, K, origins, radii, W, H, near, far, far_cull,
                               sh_degree, g_means2d, g_conics, g_depths, g_colors);
}

}  // namespace gds_project

// A fragment of the library rasterize.cpp defines: torch.ops.<extension name>.project_{forward,backward}.
TORCH_LIBRARY_FRAGMENT(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &gds_project::project_forward);
  m.def("project_backward", &gds_project::project_backward);
}
