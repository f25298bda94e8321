// Tile-based alpha compositing of projected 3D Gaussians on the CPU: forward and backward.
//
// Semantics: docs of gdensify.render (RENDER_CONTRACT): 16x16 tiles, per tile depth order (ties by index), per
// pixel front to back, skip power > 0 and alpha < 1/255, alpha = min(0.99, o*exp(power)), stop a pixel before the
// Gaussian that would bring T below 1e-4. image = sum w*c + T*bg, alpha = 1 - T, depth = sum w*z.
// Two renderer rules (gdensify.render.RasterRules) reach this file: `pixel_rect` (tile rectangle from the
// integer-pixel mean u - 0.5 with truncation, as CUDA getRect) and `clamp_grad` (the backward passes the gradient
// through the 0.99 alpha clamp, as CUDA's backward does).
//
// Design (all work in C++, no per-(pixel, Gaussian) storage):
//  1. pack: one 64-byte record per (camera, Gaussian) with the attributes the inner loops read, plus a
//     conservative exp cutoff and the half extents of the ellipse where alpha can reach 1/255;
//  2. bin: per camera, a stable LSD radix sort of the visible Gaussians by depth (ties keep index order), then a
//     two-pass counting sort of the (tile, Gaussian) pairs, split over threads in depth order, so every tile list
//     comes out depth sorted;
//  3. forward: one work item per (camera, tile), longest lists first, OpenMP dynamic schedule; a Gaussian-outer
//     loop over the tile's depth-sorted list with the 256 pixels as 8-wide vectors (AVX2 when compiled with it,
//     a portable 8-lane loop otherwise), restricted to the rows/columns of the Gaussian's alpha ellipse; per
//     pixel it keeps T, colour, depth and the number of list entries up to its last contributor; the tile stops
//     as soon as all its pixels stopped;
//  4. backward: per work item, back to front from the largest last-contributor index, recomputing alpha exactly as
//     the forward did and recovering T_i = T_{i+1} / (1 - alpha_i); per-Gaussian sums are reduced over the tile's
//     pixels in registers, then added to a per-thread buffer (no atomics) reduced at the end.
// The ellipse and exp cutoffs are conservative (with margins well above float rounding), so they skip work
// without changing any result. Records are prefetched a few list entries ahead (the lists jump around memory),
// and large buffers come from a small cache of mapped blocks (page faults are expensive on small VMs).
// float64 (tests, finite differences) uses the portable 8-lane path.

// Only light headers (ATen core + per-operator headers + the op registry): the whole torch/extension.h costs
// several times the compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "pool.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "exp_avx2.h"
#define GDS_HAVE_AVX2 1
#else
#define GDS_HAVE_AVX2 0
#endif

namespace gds {

constexpr int TS = 16;              // tile size (pixels)
constexpr int TP = TS * TS;         // pixels per tile
constexpr int LANES = 8;            // pixels per vector
constexpr int VPR = TS / LANES;     // vectors per tile row
constexpr int PK = 16;              // packed record stride (scalars)
enum { PU = 0, PV, PA, PB, PC, PO, PR, PG, PBL, PZ, PCUT, PEX, PEY };
constexpr int NG = 12;              // gradient record: u v a b c o r g b z |u| |v|
constexpr int NGS = 16;             // its stride (one 64-byte line in float)
constexpr int PREFETCH = 8;         // list entries ahead whose records are prefetched
// Parallel grain sizes: each chunk should be worth a thread team's synchronisation (tens of microseconds when
// idle, up to a scheduler time slice when the machine is oversubscribed).
constexpr int64_t kGrainPack = 32768;       // Gaussians (~30 ns each)
constexpr int64_t kGrainGather = 65536;     // rectangles
constexpr int64_t kGrainReduce = 32768;     // gradient records
constexpr int64_t kMinParallelBin = 65536;  // visible Gaussians before the tile counting sort uses threads

template <typename S>
inline void prefetch_record(const S* p, int rw) {
  if (rw) {
    __builtin_prefetch(p, 1, 3);
    if (sizeof(S) * PK > 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + 64, 1, 3);
  } else {
    __builtin_prefetch(p, 0, 3);
    if (sizeof(S) * PK > 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + 64, 0, 3);
  }
}
enum { GU = 0, GV, GA, GB_, GC, GO, GR, GG, GBL, GZ, GAU, GAV };

inline int num_threads() { return std::max(1, at::get_num_threads()); }
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline double now() {
#ifdef _OPENMP
  return omp_get_wtime();
#else
  return double(std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now().time_since_epoch()).count()) * 1e-9;
#endif
}
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// ------------------------------------------------------------------------------------------------ memory
// Pool and pooled_empty: pool.h.

// Scratch space from the pool, returned on scope exit.
template <typename T>
struct Scratch {
  T* p = nullptr;
  size_t n = 0;
  explicit Scratch(size_t count) : p(static_cast<T*>(Pool::get().acquire(std::max<size_t>(count, 1) * sizeof(T)))),
                                   n(count) {}
  ~Scratch() { Pool::get().release(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T& operator[](size_t i) { return p[i]; }
  const T& operator[](size_t i) const { return p[i]; }
  T* data() { return p; }
};

// The per-thread gradient buffers of the backward: one block that is all zeros whenever it is parked here (the
// reduction zeroes what it read), so no call has to clear or fault in tens of MB.
class ZeroBlock {
 public:
  static ZeroBlock& get() {
    static ZeroBlock* z = new ZeroBlock();
    return *z;
  }
  // returns a zeroed block of at least `bytes`
  void* take(size_t bytes, size_t& got) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (p_ != nullptr && size_ >= bytes) {
        void* p = p_;
        got = size_;
        p_ = nullptr;
        size_ = 0;
        return p;
      }
    }
    got = ((bytes + 4095) / 4096) * 4096;
    void* p = std::aligned_alloc(4096, got);
    TORCH_CHECK(p != nullptr, "gdensify cpu rasterizer: out of memory allocating ", got, " bytes");
    std::memset(p, 0, got);
    return p;
  }
  // hand back a block that is all zeros again (or free it)
  void give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (p_ == nullptr && bytes <= (size_t(1) << 31)) {
      p_ = p;
      size_ = bytes;
    } else if (p_ != nullptr && bytes > size_) {
      std::free(p_);
      p_ = p;
      size_ = bytes;
    } else {
      std::free(p);
    }
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    std::free(p_);
    p_ = nullptr;
    size_ = 0;
  }

 private:
  std::mutex mu_;
  void* p_ = nullptr;
  size_t size_ = 0;
};

// ------------------------------------------------------------------------------------------------ vectors
// Portable 8-lane vector (used for double, and for float when AVX2/FMA are not compiled in).
template <typename T>
struct VecG {
  using S = T;
  T x[LANES];
  struct M {
    bool b[LANES];
  };
  static VecG set1(T a) {
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = a;
    return r;
  }
  static VecG load(const T* p) {
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = p[i];
    return r;
  }
  void store(T* p) const {
    for (int i = 0; i < LANES; ++i) p[i] = x[i];
  }
#define GDS_BIN(OP)                                              \
  friend VecG operator OP(const VecG& a, const VecG& b) {        \
    VecG r;                                                      \
    for (int i = 0; i < LANES; ++i) r.x[i] = a.x[i] OP b.x[i];   \
    return r;                                                    \
  }
  GDS_BIN(+)
  GDS_BIN(-)
  GDS_BIN(*)
  GDS_BIN(/)
#undef GDS_BIN
#define GDS_CMP(NAME, OP)                                        \
  friend M NAME(const VecG& a, const VecG& b) {                  \
    M r;                                                         \
    for (int i = 0; i < LANES; ++i) r.b[i] = a.x[i] OP b.x[i];   \
    return r;                                                    \
  }
  GDS_CMP(cmp_le, <=)
  GDS_CMP(cmp_ge, >=)
  GDS_CMP(cmp_lt, <)
#undef GDS_CMP
  friend VecG fmadd(const VecG& a, const VecG& b, const VecG& c) { return a * b + c; }
  friend VecG vmin(const VecG& a, const VecG& b) {  // min(a, b) for a clamp value b; NaN in a propagates
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = b.x[i] < a.x[i] ? b.x[i] : a.x[i];
    return r;
  }
  friend VecG vabs(const VecG& a) {
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = std::abs(a.x[i]);
    return r;
  }
  friend VecG vexp(const VecG& a) {
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = std::exp(a.x[i]);
    return r;
  }
  friend M operator&(const M& a, const M& b) {
    M r;
    for (int i = 0; i < LANES; ++i) r.b[i] = a.b[i] && b.b[i];
    return r;
  }
  friend M andnot(const M& a, const M& b) {  // a & !b
    M r;
    for (int i = 0; i < LANES; ++i) r.b[i] = a.b[i] && !b.b[i];
    return r;
  }
  static bool any(const M& m) {
    bool r = false;
    for (int i = 0; i < LANES; ++i) r |= m.b[i];
    return r;
  }
  static int count(const M& m) {
    int r = 0;
    for (int i = 0; i < LANES; ++i) r += m.b[i];
    return r;
  }
  static VecG select(const M& m, const VecG& a, const VecG& b) {
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = m.b[i] ? a.x[i] : b.x[i];
    return r;
  }
  // masks stored as int32 0 / -1
  static M load_mask(const int32_t* p) {
    M r;
    for (int i = 0; i < LANES; ++i) r.b[i] = p[i] != 0;
    return r;
  }
  static void or_mask(int32_t* p, const M& m) {
    for (int i = 0; i < LANES; ++i)
      if (m.b[i]) p[i] = -1;
  }
  static M int_gt(const int32_t* p, int32_t v) {  // p[i] > v
    M r;
    for (int i = 0; i < LANES; ++i) r.b[i] = p[i] > v;
    return r;
  }
  static void select_store_int(int32_t* p, const M& m, int32_t v) {
    for (int i = 0; i < LANES; ++i)
      if (m.b[i]) p[i] = v;
  }
  static T hsum(const VecG& a) {
    T r = 0;
    for (int i = 0; i < LANES; ++i) r += a.x[i];
    return r;
  }
  // rec[q] += sum of the lanes of v[q], q < 12
  static void add_hsums12(const VecG* v, T* rec) {
    for (int q = 0; q < 12; ++q) rec[q] += hsum(v[q]);
  }
  static VecG ramp() {  // 0, 1, ..., 7
    VecG r;
    for (int i = 0; i < LANES; ++i) r.x[i] = T(i);
    return r;
  }
};

#if GDS_HAVE_AVX2
struct VecF8 {
  using S = float;
  __m256 x;
  struct M {
    __m256 m;
  };
  VecF8() = default;
  VecF8(__m256 v) : x(v) {}
  static VecF8 set1(float a) { return _mm256_set1_ps(a); }
  static VecF8 load(const float* p) { return _mm256_load_ps(p); }
  void store(float* p) const { _mm256_store_ps(p, x); }
  friend VecF8 operator+(const VecF8& a, const VecF8& b) { return _mm256_add_ps(a.x, b.x); }
  friend VecF8 operator-(const VecF8& a, const VecF8& b) { return _mm256_sub_ps(a.x, b.x); }
  friend VecF8 operator*(const VecF8& a, const VecF8& b) { return _mm256_mul_ps(a.x, b.x); }
  friend VecF8 operator/(const VecF8& a, const VecF8& b) { return _mm256_div_ps(a.x, b.x); }
  friend M cmp_le(const VecF8& a, const VecF8& b) { return {_mm256_cmp_ps(a.x, b.x, _CMP_LE_OQ)}; }
  friend M cmp_ge(const VecF8& a, const VecF8& b) { return {_mm256_cmp_ps(a.x, b.x, _CMP_GE_OQ)}; }
  friend M cmp_lt(const VecF8& a, const VecF8& b) { return {_mm256_cmp_ps(a.x, b.x, _CMP_LT_OQ)}; }
  friend VecF8 fmadd(const VecF8& a, const VecF8& b, const VecF8& c) { return _mm256_fmadd_ps(a.x, b.x, c.x); }
  // min(a, b) for a clamp value b: _mm256_min_ps returns its second operand when either is NaN, so put a there
  // to let NaN propagate like torch.clamp does.
  friend VecF8 vmin(const VecF8& a, const VecF8& b) { return _mm256_min_ps(b.x, a.x); }
  friend VecF8 vabs(const VecF8& a) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.x);
  }
  friend VecF8 vexp(const VecF8& a) { return gds_exp_avx2(a.x); }  // about 1 ulp (exp_avx2.h)
  friend M operator&(const M& a, const M& b) { return {_mm256_and_ps(a.m, b.m)}; }
  friend M andnot(const M& a, const M& b) { return {_mm256_andnot_ps(b.m, a.m)}; }
  static bool any(const M& m) { return _mm256_movemask_ps(m.m) != 0; }
  static int count(const M& m) { return __builtin_popcount(_mm256_movemask_ps(m.m)); }
  static VecF8 select(const M& m, const VecF8& a, const VecF8& b) { return _mm256_blendv_ps(b.x, a.x, m.m); }
  static M load_mask(const int32_t* p) { return {_mm256_castsi256_ps(_mm256_load_si256((const __m256i*)p))}; }
  static void or_mask(int32_t* p, const M& m) {
    __m256 old = _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)p));
    _mm256_store_si256((__m256i*)p, _mm256_castps_si256(_mm256_or_ps(old, m.m)));
  }
  static M int_gt(const int32_t* p, int32_t v) {
    __m256i a = _mm256_load_si256((const __m256i*)p);
    return {_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(v)))};
  }
  static void select_store_int(int32_t* p, const M& m, int32_t v) {
    __m256 old = _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)p));
    __m256 nv = _mm256_castsi256_ps(_mm256_set1_epi32(v));
    _mm256_store_si256((__m256i*)p, _mm256_castps_si256(_mm256_blendv_ps(old, nv, m.m)));
  }
  static float hsum(const VecF8& a) {
    __m128 lo = _mm256_castps256_ps128(a.x);
    __m128 hi = _mm256_extractf128_ps(a.x, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
  }
  // rec[q] += sum of the lanes of v[q], q < 12 (transposing reduction)
  static void add_hsums12(const VecF8* v, float* rec) {
    const __m256 s01 = _mm256_hadd_ps(v[0].x, v[1].x), s23 = _mm256_hadd_ps(v[2].x, v[3].x);
    const __m256 s45 = _mm256_hadd_ps(v[4].x, v[5].x), s67 = _mm256_hadd_ps(v[6].x, v[7].x);
    const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    const __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20);
    const __m256 hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
    _mm256_storeu_ps(rec, _mm256_add_ps(_mm256_loadu_ps(rec), _mm256_add_ps(lo, hi)));
    const __m256 s89 = _mm256_hadd_ps(v[8].x, v[9].x), s1011 = _mm256_hadd_ps(v[10].x, v[11].x);
    const __m256 s811 = _mm256_hadd_ps(s89, s1011);
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s811), _mm256_extractf128_ps(s811, 1));
    _mm_storeu_ps(rec + 8, _mm_add_ps(_mm_loadu_ps(rec + 8), t));
  }
  static VecF8 ramp() { return _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f); }
};
#endif

template <typename T>
struct VecFor {
  using type = VecG<T>;
};
#if GDS_HAVE_AVX2
template <>
struct VecFor<float> {
  using type = VecF8;
};
#endif

template <typename T>
struct Consts {
  static T alpha_min() { return T(1.0 / 255.0); }
  static T alpha_max() { return T(0.99); }
  static T t_min() { return T(1e-4); }
};

// ------------------------------------------------------------------------------------------------ packing
struct Rect {
  int32_t x0, x1, y0, y1;
};

// Half extents (pixels, with margins) of the ellipse where o*exp(power) can reach 1/255, and the exp cutoff.
template <typename T>
inline void alpha_support(T a, T b, T c, T o, T& cut, T& ex, T& ey) {
  const double inf = std::numeric_limits<double>::infinity();
  double od = double(o);
  double k = 2.0 * std::log(255.0 * od);  // alpha >= 1/255 needs d^T Q d <= k
  if (!(k > 0.0)) k = 0.0;
  // power >= cut for every pair that can pass the alpha test (1% + 1e-3 margin over the exact bound).
  cut = T(-(0.5 * k * 1.01 + 1e-3));
  double ad = double(a), bd = double(b), cd = double(c);
  double det = ad * cd - bd * bd;
  double exd = inf, eyd = inf;
  // Use the ellipse only when it is well conditioned; rounding in the computed power is then far below the
  // 2% + 4e-3 slack on k plus one pixel on each side.
  if (ad > 0.0 && cd > 0.0 && det > 1e-4 * ad * cd && std::isfinite(det)) {
    double kk = k * 1.02 + 4e-3;
    exd = std::sqrt(kk * cd / det) + 1.0;
    eyd = std::sqrt(kk * ad / det) + 1.0;
  }
  ex = T(std::min(exd, 1e30));
  ey = T(std::min(eyd, 1e30));
}

template <typename T>
void pack(int64_t C, int64_t N, const T* means2d, const T* conics, const T* colors, const T* opac,
          const T* depths, const int32_t* radii, int tiles_x, int tiles_y, bool pixel_rect, T* packed,
          Rect* rects) {
  const T amin_keep = Consts<T>::alpha_min() * T(0.999);
  at::parallel_for(0, C * N, kGrainPack, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      Rect& r = rects[i];
      r = {0, 0, 0, 0};
      T* p = packed + i * PK;
      int32_t rad = radii[i];
      T u = means2d[2 * i], v = means2d[2 * i + 1], o = opac[i];
      if (rad <= 0 || !std::isfinite(u) || !std::isfinite(v) || !(o >= amin_keep)) continue;
      // Exactly projection.tile_rect: floor((u - r)/16), floor((u + r + 15)/16), clamped to [0, tiles]; with
      // pixel_rect the same from u - 0.5 with truncation.
      const T rr = T(rad);
      const T ru = pixel_rect ? u - T(0.5) : u, rv = pixel_rect ? v - T(0.5) : v;
      auto rnd = [pixel_rect](T f) { return pixel_rect ? std::trunc(f) : std::floor(f); };
      T fx0 = rnd((ru - rr) / T(TS));
      T fx1 = rnd((ru + rr + T(TS - 1)) / T(TS));
      T fy0 = rnd((rv - rr) / T(TS));
      T fy1 = rnd((rv + rr + T(TS - 1)) / T(TS));
      auto clampi = [](T f, int hi) -> int32_t {
        if (!(f > T(0))) return 0;
        if (f > T(hi)) return hi;
        return int32_t(f);
      };
      r.x0 = clampi(fx0, tiles_x);
      r.x1 = clampi(fx1, tiles_x);
      r.y0 = clampi(fy0, tiles_y);
      r.y1 = clampi(fy1, tiles_y);
      if (r.x1 <= r.x0 || r.y1 <= r.y0) {
        r = {0, 0, 0, 0};
        continue;
      }
      T a = conics[3 * i], bb = conics[3 * i + 1], cc = conics[3 * i + 2];
      p[PU] = u;
      p[PV] = v;
      p[PA] = a;
      p[PB] = bb;
      p[PC] = cc;
      p[PO] = o;
      p[PR] = colors[3 * i];
      p[PG] = colors[3 * i + 1];
      p[PBL] = colors[3 * i + 2];
      p[PZ] = depths[i];
      alpha_support<T>(a, bb, cc, o, p[PCUT], p[PEX], p[PEY]);
    }
  });
}

// ------------------------------------------------------------------------------------------------ sorting
template <typename T>
struct SortKey;
template <>
struct SortKey<float> {
  using K = uint32_t;
  static K key(float f) {
    if (f == 0.0f) f = 0.0f;  // -0 == +0
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};
template <>
struct SortKey<double> {
  using K = uint64_t;
  static K key(double f) {
    if (f == 0.0) f = 0.0;
    uint64_t u;
    std::memcpy(&u, &f, 8);
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  }
};

// Stable LSD radix sort of ids by keys (8-bit digits; passes where all keys share the digit are skipped).
// k2/i2 are scratch of the same length; the result ends in keys/ids.
template <typename K>
void radix_sort(K* keys, int32_t* ids, K* k2, int32_t* i2, size_t n) {
  if (n < 2) return;
  K* ka = keys;
  int32_t* ia = ids;
  K* kb = k2;
  int32_t* ib = i2;
  for (int shift = 0; shift < int(sizeof(K) * 8); shift += 8) {
    size_t count[256] = {0};
    for (size_t i = 0; i < n; ++i) ++count[(ka[i] >> shift) & 0xFF];
    bool trivial = false;
    for (int d = 0; d < 256; ++d)
      if (count[d] == n) trivial = true;
    if (trivial) continue;
    size_t pos[256];
    size_t run = 0;
    for (int d = 0; d < 256; ++d) {
      pos[d] = run;
      run += count[d];
    }
    for (size_t i = 0; i < n; ++i) {
      const size_t j = pos[(ka[i] >> shift) & 0xFF]++;
      kb[j] = ka[i];
      ib[j] = ia[i];
    }
    std::swap(ka, kb);
    std::swap(ia, ib);
  }
  if (ia != ids) std::memcpy(ids, ia, n * sizeof(int32_t));
}

// ------------------------------------------------------------------------------------------------ binning
struct Bins {
  at::Tensor offsets;  // (C*tiles + 1) int64: list range of each (camera, tile)
  at::Tensor list;     // (I,) int32 flat index c*N + n, per (camera, tile) in depth order
};

template <typename T>
Bins bin(int64_t C, int64_t N, const T* depths, const Rect* rects, int tiles_x, int tiles_y) {
  using K = typename SortKey<T>::K;
  const int64_t ntiles = int64_t(tiles_x) * tiles_y;
  const int64_t nbins = C * ntiles;
  // 1. per camera, the visible Gaussians sorted by (depth, index): order[c*N, c*N + nvis[c])
  Scratch<int32_t> order(size_t(C * N)), ids2(size_t(C * N));
  Scratch<K> keys(size_t(C * N)), keys2(size_t(C * N));
  std::vector<int64_t> nvis(size_t(C), 0);
  at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int32_t* ids = order.data() + c * N;
      K* ks = keys.data() + c * N;
      int64_t m = 0;
      for (int64_t n = 0; n < N; ++n) {
        const Rect& r = rects[c * N + n];
        if (r.x1 > r.x0) {
          ks[m] = SortKey<T>::key(depths[c * N + n]);
          ids[m++] = int32_t(n);
        }
      }
      nvis[size_t(c)] = m;
      radix_sort(ks, ids, keys2.data() + c * N, ids2.data() + c * N, size_t(m));
    }
  });
  // the rectangles in depth order (one prefetched random gather; the two passes below then read sequentially)
  Scratch<Rect> srect(size_t(C * N));
  for (int64_t c = 0; c < C; ++c) {
    const int32_t* ord = order.data() + c * N;
    const Rect* rc = rects + c * N;
    Rect* dst = srect.data() + c * N;
    at::parallel_for(0, nvis[size_t(c)], kGrainGather, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (i + 16 < e) __builtin_prefetch(rc + ord[i + 16]);
        dst[i] = rc[ord[i]];
      }
    });
  }
  // 2. counting sort of (bin, Gaussian) pairs; chunk t = one contiguous depth range per camera, so concatenating
  //    the chunks' pairs in chunk order keeps every bin depth sorted.
  // Few pairs: one chunk (a thread team's start/barrier costs more than the work, above all on a busy machine).
  int64_t total_vis = 0;
  for (int64_t v : nvis) total_vis += v;
  const int nt = total_vis >= kMinParallelBin ? num_threads() : 1;
  std::vector<int64_t> hist(size_t(nt) * nbins, 0);
  auto chunk = [&](int64_t c, int t, int64_t& b, int64_t& e) {
    const int64_t n = nvis[size_t(c)];
    b = n * t / nt;
    e = n * (t + 1) / nt;
  };
#pragma omp parallel num_threads(nt)
  {
    // chunk t is processed by thread t % team (the team may be smaller than asked)
    for (int t = thread_id(); t < nt; t += team_size()) {
      int64_t* h = hist.data() + size_t(t) * nbins;
      for (int64_t c = 0; c < C; ++c) {
        int64_t b, e;
        chunk(c, t, b, e);
        int64_t* hc = h + c * ntiles;
        const Rect* sr = srect.data() + c * N;
        for (int64_t i = b; i < e; ++i) {
          const Rect& r = sr[i];
          for (int ty = r.y0; ty < r.y1; ++ty)
            for (int tx = r.x0; tx < r.x1; ++tx) ++hc[int64_t(ty) * tiles_x + tx];
        }
      }
    }
  }
  Bins out;
  out.offsets = at::empty({nbins + 1}, at::kLong);
  int64_t* off = out.offsets.data_ptr<int64_t>();
  int64_t run = 0;
  for (int64_t bn = 0; bn < nbins; ++bn) {
    off[bn] = run;
    for (int t = 0; t < nt; ++t) {
      const int64_t cnt = hist[size_t(t) * nbins + bn];
      hist[size_t(t) * nbins + bn] = run;  // becomes the chunk's write position
      run += cnt;
    }
  }
  off[nbins] = run;
  out.list = pooled_empty({run}, at::kInt);
  int32_t* lst = out.list.data_ptr<int32_t>();
#pragma omp parallel num_threads(nt)
  {
    for (int t = thread_id(); t < nt; t += team_size()) {
      int64_t* h = hist.data() + size_t(t) * nbins;
      for (int64_t c = 0; c < C; ++c) {
        int64_t b, e;
        chunk(c, t, b, e);
        int64_t* hc = h + c * ntiles;
        const int32_t* ord = order.data() + c * N;
        const Rect* sr = srect.data() + c * N;
        for (int64_t i = b; i < e; ++i) {
          const int32_t n = ord[i];
          const Rect& r = sr[i];
          const int32_t flat = int32_t(c * N + n);
          for (int ty = r.y0; ty < r.y1; ++ty)
            for (int tx = r.x0; tx < r.x1; ++tx) lst[hc[int64_t(ty) * tiles_x + tx]++] = flat;
        }
      }
    }
  }
  return out;
}

// Work items (camera, tile) with the longest lists first (helps the dynamic schedule's tail).
inline std::vector<int64_t> work_order(const int64_t* off, int64_t nbins) {
  std::vector<int64_t> items(nbins);
  std::iota(items.begin(), items.end(), 0);
  std::stable_sort(items.begin(), items.end(), [&](int64_t a, int64_t b) {
    return off[a + 1] - off[a] > off[b + 1] - off[b];
  });
  return items;
}

// Rows [r0, r1] and vector columns [k0, k1] of a tile where the Gaussian's alpha ellipse can reach 1/255.
template <typename T>
inline bool support_range(const T* g, int tx0, int ty0, int& r0, int& r1, int& k0, int& k1) {
  auto lo = [](T f) -> int {  // floor, clamped to [-1, TS]
    f = std::floor(f);
    if (!(f > T(-1))) return -1;
    if (f > T(TS)) return TS;
    return int(f);
  };
  auto hi = [](T f) -> int {  // ceil, clamped to [-1, TS]
    f = std::ceil(f);
    if (!(f < T(TS))) return TS;
    if (f < T(-1)) return -1;
    return int(f);
  };
  const T cu = g[PU] - T(tx0) - T(0.5), cv = g[PV] - T(ty0) - T(0.5);
  int c0 = std::max(0, lo(cu - g[PEX])), c1 = std::min(TS - 1, hi(cu + g[PEX]));
  r0 = std::max(0, lo(cv - g[PEY]));
  r1 = std::min(TS - 1, hi(cv + g[PEY]));
  if (c0 > c1 || r0 > r1) return false;
  k0 = c0 / LANES;
  k1 = c1 / LANES;
  return true;
}

// ------------------------------------------------------------------------------------------------ forward
template <typename V>
void forward_tile(const typename V::S* packed, const int32_t* list, int64_t start, int64_t end, int tx0, int ty0,
                  int W, int H, const typename V::S* bg, typename V::S* img, typename V::S* alpha_out,
                  typename V::S* depth_out, typename V::S* tfin, int32_t* nc_out) {
  using S = typename V::S;
  using M = typename V::M;
  alignas(64) S Tb[TP], Cr[TP], Cg[TP], Cb[TP], Db[TP];
  alignas(64) int32_t done[TP], NC[TP];
  int vdone[TP / LANES] = {0};  // stopped pixels per vector: a vector whose 8 pixels stopped is skipped
  int n_done = 0;
  for (int p = 0; p < TP; ++p) {
    const int x = tx0 + p % TS, y = ty0 + p / TS;
    Tb[p] = S(1);
    Cr[p] = Cg[p] = Cb[p] = Db[p] = S(0);
    NC[p] = 0;
    const bool in = x < W && y < H;
    done[p] = in ? 0 : -1;
    n_done += !in;
    vdone[p / LANES] += !in;
  }
  const V one = V::set1(S(1)), amax = V::set1(Consts<S>::alpha_max()), amin = V::set1(Consts<S>::alpha_min());
  const V tmin = V::set1(Consts<S>::t_min()), zero = V::set1(S(0)), mhalf = V::set1(S(-0.5));
  V pxv[VPR];
  for (int k = 0; k < VPR; ++k) pxv[k] = V::ramp() + V::set1(S(tx0 + k * LANES) + S(0.5));

  for (int64_t j = start; j < end && n_done < TP; ++j) {
    if (j + PREFETCH < end) prefetch_record(packed + int64_t(list[j + PREFETCH]) * PK, 0);
    const S* g = packed + int64_t(list[j]) * PK;
    int r0, r1, k0, k1;
    if (!support_range<S>(g, tx0, ty0, r0, r1, k0, k1)) continue;
    const V vu = V::set1(g[PU]), va = V::set1(g[PA]), vb = V::set1(g[PB]), vo = V::set1(g[PO]);
    const V vcut = V::set1(g[PCUT]);
    const S c = g[PC], v = g[PV];
    const V cr = V::set1(g[PR]), cg = V::set1(g[PG]), cb = V::set1(g[PBL]), cz = V::set1(g[PZ]);
    const int32_t ncv = int32_t(j - start + 1);
    for (int r = r0; r <= r1; ++r) {
      const S dy = v - (S(ty0 + r) + S(0.5));
      const V vcdy2 = V::set1(c * dy * dy), vdy = V::set1(dy);
      for (int k = k0; k <= k1; ++k) {
        const int idx = r * TS + k * LANES;
        if (vdone[idx / LANES] == LANES) continue;
        const V dx = vu - pxv[k];
        // power = -0.5 (a dx^2 + c dy^2) - b dx dy
        const V power = mhalf * fmadd(va * dx, dx, vcdy2) - (vb * dx) * vdy;
        M m = andnot(cmp_le(power, zero) & cmp_ge(power, vcut), V::load_mask(done + idx));
        if (!V::any(m)) continue;
        const V al = vmin(vo * vexp(power), amax);
        m = m & cmp_ge(al, amin);
        if (!V::any(m)) continue;
        const V Tv = V::load(Tb + idx);
        const V test = Tv * (one - al);
        const M stop = m & cmp_lt(test, tmin);
        if (V::any(stop)) {
          V::or_mask(done + idx, stop);
          const int ns = V::count(stop);
          n_done += ns;
          vdone[idx / LANES] += ns;
        }
        const M con = andnot(m, stop);
        if (!V::any(con)) continue;
        const V w = V::select(con, al * Tv, zero);
        fmadd(w, cr, V::load(Cr + idx)).store(Cr + idx);
        fmadd(w, cg, V::load(Cg + idx)).store(Cg + idx);
        fmadd(w, cb, V::load(Cb + idx)).store(Cb + idx);
        fmadd(w, cz, V::load(Db + idx)).store(Db + idx);
        V::select(con, test, Tv).store(Tb + idx);
        V::select_store_int(NC + idx, con, ncv);
      }
    }
  }
  for (int p = 0; p < TP; ++p) {
    const int x = tx0 + p % TS, y = ty0 + p / TS;
    if (x >= W || y >= H) continue;
    const int64_t o = int64_t(y) * W + x;
    const S T = Tb[p];
    img[3 * o] = Cr[p] + T * bg[0];
    img[3 * o + 1] = Cg[p] + T * bg[1];
    img[3 * o + 2] = Cb[p] + T * bg[2];
    alpha_out[o] = S(1) - T;
    depth_out[o] = Db[p];
    tfin[o] = T;
    nc_out[o] = NC[p];
  }
}

// ------------------------------------------------------------------------------------------------ backward
template <typename V>
void backward_tile(const typename V::S* packed, const int32_t* list, int64_t start, int tx0, int ty0, int W, int H,
                   const typename V::S* bg, const typename V::S* g_img, const typename V::S* g_alpha,
                   const typename V::S* g_depth, const typename V::S* tfin, const int32_t* nc_in,
                   bool clamp_grad, typename V::S* gbuf, typename V::S* g_bg) {
  using S = typename V::S;
  using M = typename V::M;
  alignas(64) S Tb[TP], GBb[TP], GRb[TP], GGb[TP], GBLb[TP], GDb[TP];
  alignas(64) int32_t NC[TP];
  int32_t max_nc = 0;
  S gbg0 = 0, gbg1 = 0, gbg2 = 0;
  for (int p = 0; p < TP; ++p) {
    const int x = tx0 + p % TS, y = ty0 + p / TS;
    if (x >= W || y >= H) {
      Tb[p] = S(1);
      GBb[p] = GRb[p] = GGb[p] = GBLb[p] = GDb[p] = S(0);
      NC[p] = 0;
      continue;
    }
    const int64_t o = int64_t(y) * W + x;
    const S T = tfin[o];
    const S gr = g_img[3 * o], gg = g_img[3 * o + 1], gb = g_img[3 * o + 2];
    Tb[p] = T;
    GRb[p] = gr;
    GGb[p] = gg;
    GBLb[p] = gb;
    GDb[p] = g_depth[o];
    // gB = dL/dC . (colour behind, background included) + dL/dD . (depth behind) - dL/dA . T_final
    GBb[p] = T * (gr * bg[0] + gg * bg[1] + gb * bg[2] - g_alpha[o]);
    gbg0 += T * gr;
    gbg1 += T * gg;
    gbg2 += T * gb;
    NC[p] = nc_in[o];
    max_nc = std::max(max_nc, NC[p]);
  }
  g_bg[0] += gbg0;
  g_bg[1] += gbg1;
  g_bg[2] += gbg2;

  const V one = V::set1(S(1)), amax = V::set1(Consts<S>::alpha_max()), amin = V::set1(Consts<S>::alpha_min());
  const V zero = V::set1(S(0)), mhalf = V::set1(S(-0.5));
  // without clamp_grad the derivative is zero where x = o*G exceeds 0.99; with it, x is never compared
  const V gmax = V::set1(clamp_grad ? std::numeric_limits<S>::infinity() : Consts<S>::alpha_max());
  V pxv[VPR];
  for (int k = 0; k < VPR; ++k) pxv[k] = V::ramp() + V::set1(S(tx0 + k * LANES) + S(0.5));

  for (int32_t jr = max_nc - 1; jr >= 0; --jr) {
    if (jr >= PREFETCH) {
      const int64_t ahead = list[start + jr - PREFETCH];
      prefetch_record(packed + ahead * PK, 0);
      prefetch_record(gbuf + ahead * NGS, 1);
    }
    const int32_t id = list[start + jr];
    const S* g = packed + int64_t(id) * PK;
    int r0, r1, k0, k1;
    if (!support_range<S>(g, tx0, ty0, r0, r1, k0, k1)) continue;
    const V vu = V::set1(g[PU]), va = V::set1(g[PA]), vb = V::set1(g[PB]), vc = V::set1(g[PC]);
    const V vo = V::set1(g[PO]), vcut = V::set1(g[PCUT]);
    const S c = g[PC], v = g[PV];
    const V cr = V::set1(g[PR]), cg = V::set1(g[PG]), cb = V::set1(g[PBL]), cz = V::set1(g[PZ]);
    V aU = zero, aV = zero, aA = zero, aB = zero, aC = zero, aO = zero, aR = zero, aG = zero, aBl = zero,
      aZ = zero, aAU = zero, aAV = zero;
    bool touched = false;
    for (int r = r0; r <= r1; ++r) {
      const S dy = v - (S(ty0 + r) + S(0.5));
      const V vcdy2 = V::set1(c * dy * dy), vdy = V::set1(dy);
      for (int k = k0; k <= k1; ++k) {
        const int idx = r * TS + k * LANES;
        M m = V::int_gt(NC + idx, jr);
        if (!V::any(m)) continue;
        const V dx = vu - pxv[k];
        const V power = mhalf * fmadd(va * dx, dx, vcdy2) - (vb * dx) * vdy;
        m = m & cmp_le(power, zero) & cmp_ge(power, vcut);
        if (!V::any(m)) continue;
        const V e = vexp(power);
        const V x = vo * e;
        const V al = vmin(x, amax);
        m = m & cmp_ge(al, amin);
        if (!V::any(m)) continue;
        touched = true;
        const V inv = one / (one - al);
        const V Tv = V::load(Tb + idx);
        const V Tn = Tv * inv;  // T before this Gaussian
        const V gr = V::load(GRb + idx), gg = V::load(GGb + idx), gbl = V::load(GBLb + idx),
                gd = V::load(GDb + idx);
        const V s = fmadd(gr, cr, fmadd(gg, cg, fmadd(gbl, cb, gd * cz)));
        const V gB = V::load(GBb + idx);
        const V dal = Tn * s - gB * inv;  // dL/dalpha
        const V w = V::select(m, al * Tn, zero);
        V::select(m, Tn, Tv).store(Tb + idx);
        fmadd(w, s, gB).store(GBb + idx);
        aR = fmadd(w, gr, aR);
        aG = fmadd(w, gg, aG);
        aBl = fmadd(w, gbl, aBl);
        aZ = fmadd(w, gd, aZ);
        const V gx = V::select(m & cmp_le(x, gmax), dal, zero);  // zero where the 0.99 clamp is active
        aO = fmadd(gx, e, aO);
        const V gp = gx * x;  // dL/dpower
        const V gpdx = gp * dx, gpdy = gp * vdy;
        aA = fmadd(gpdx, dx, aA);  // scaled by -1/2 at the end
        aB = fmadd(gpdx, vdy, aB);  // by -1
        aC = fmadd(gpdy, vdy, aC);  // by -1/2
        // dpower/du = -(a dx + b dy), dpower/dv = -(b dx + c dy): accumulate the negated per-pixel terms
        const V ngu = fmadd(va, gpdx, vb * gpdy);
        const V ngv = fmadd(vb, gpdx, vc * gpdy);
        aU = aU + ngu;
        aV = aV + ngv;
        aAU = aAU + vabs(ngu);
        aAV = aAV + vabs(ngv);
      }
    }
    if (!touched) continue;
    const V acc[NG] = {zero - aU, zero - aV, V::set1(S(-0.5)) * aA, zero - aB, V::set1(S(-0.5)) * aC,
                       aO, aR, aG, aBl, aZ, aAU, aAV};
    V::add_hsums12(acc, gbuf + int64_t(id) * NGS);
  }
}

// ------------------------------------------------------------------------------------------------ entry points
void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opac, const at::Tensor& depths, const at::Tensor& radii, const at::Tensor& bg) {
  for (const at::Tensor* t : {&means2d, &conics, &colors, &opac, &depths, &radii, &bg}) {
    TORCH_CHECK(t->device().is_cpu(), "gdensify cpu rasterizer: tensors must be on the CPU");
    TORCH_CHECK(t->is_contiguous(), "gdensify cpu rasterizer: tensors must be contiguous");
  }
  const auto dt = means2d.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "gdensify cpu rasterizer: float32 or float64 only");
  for (const at::Tensor* t : {&conics, &colors, &opac, &depths, &bg})
    TORCH_CHECK(t->scalar_type() == dt, "gdensify cpu rasterizer: all float inputs must share one dtype");
  TORCH_CHECK(radii.scalar_type() == at::kInt, "gdensify cpu rasterizer: radii must be int32");
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be (C, N, 2)");
  const int64_t C = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(conics.sizes() == at::IntArrayRef({C, N, 3}), "conics must be (C, N, 3)");
  TORCH_CHECK(colors.sizes() == at::IntArrayRef({C, N, 3}), "colors must be (C, N, 3)");
  TORCH_CHECK(opac.sizes() == at::IntArrayRef({C, N}), "opacities must be (C, N)");
  TORCH_CHECK(depths.sizes() == at::IntArrayRef({C, N}), "depths must be (C, N)");
  TORCH_CHECK(radii.sizes() == at::IntArrayRef({C, N}), "radii must be (C, N)");
  TORCH_CHECK(bg.sizes() == at::IntArrayRef({C, 3}), "background must be (C, 3)");
  TORCH_CHECK(C * N < (int64_t(1) << 31), "gdensify cpu rasterizer: C*N must fit in int32");
}

template <typename S>
std::vector<at::Tensor> forward_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                     const at::Tensor& opac, const at::Tensor& depths, const at::Tensor& radii,
                                     const at::Tensor& bg, int64_t W, int64_t H, bool pixel_rect) {
  using V = typename VecFor<S>::type;
  const int64_t C = means2d.size(0), N = means2d.size(1);
  const int tiles_x = int((W + TS - 1) / TS), tiles_y = int((H + TS - 1) / TS);
  const int64_t ntiles = int64_t(tiles_x) * tiles_y;
  const double t0 = now();
  const at::ScalarType dt = means2d.scalar_type();
  at::Tensor packed = pooled_empty({C * N, PK}, dt);
  Scratch<Rect> rects(size_t(C * N));
  pack<S>(C, N, means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(), opac.data_ptr<S>(),
          depths.data_ptr<S>(), radii.data_ptr<int32_t>(), tiles_x, tiles_y, pixel_rect, packed.data_ptr<S>(),
          rects.data());
  const double t1 = now();
  Bins bins = bin<S>(C, N, depths.data_ptr<S>(), rects.data(), tiles_x, tiles_y);
  const double t2 = now();

  at::Tensor image = pooled_empty({C, H, W, 3}, dt);
  at::Tensor alpha = pooled_empty({C, H, W, 1}, dt);
  at::Tensor depth = pooled_empty({C, H, W, 1}, dt);
  at::Tensor tfin = pooled_empty({C, H, W}, dt);
  at::Tensor ncon = pooled_empty({C, H, W}, at::kInt);
  const int64_t* off = bins.offsets.data_ptr<int64_t>();
  const int32_t* lst = bins.list.data_ptr<int32_t>();
  const S* pk = packed.data_ptr<S>();
  const S* bgp = bg.data_ptr<S>();
  S *imp = image.data_ptr<S>(), *alp = alpha.data_ptr<S>(), *dep = depth.data_ptr<S>(), *tfp = tfin.data_ptr<S>();
  int32_t* ncp = ncon.data_ptr<int32_t>();
  const int64_t nbins = C * ntiles;
  std::vector<int64_t> items = work_order(off, nbins);
  const int64_t HW = H * W;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t it = 0; it < nbins; ++it) {
    const int64_t bn = items[it];
    const int64_t c = bn / ntiles, t = bn % ntiles;
    const int tx0 = int(t % tiles_x) * TS, ty0 = int(t / tiles_x) * TS;
    forward_tile<V>(pk, lst, off[bn], off[bn + 1], tx0, ty0, int(W), int(H), bgp + 3 * c, imp + 3 * c * HW,
                    alp + c * HW, dep + c * HW, tfp + c * HW, ncp + c * HW);
  }
  // stage timings (s) and the number of (tile, Gaussian) pairs, for profiling
  at::Tensor stats = at::empty({4}, at::kDouble);
  double* st = stats.data_ptr<double>();
  st[0] = t1 - t0;
  st[1] = t2 - t1;
  st[2] = now() - t2;
  st[3] = double(bins.list.numel());
  return {image, alpha, depth, tfin, ncon, bins.offsets, bins.list, packed, stats};
}

template <typename S>
std::vector<at::Tensor> backward_impl(const at::Tensor& g_img, const at::Tensor& g_alpha, const at::Tensor& g_depth,
                                      const at::Tensor& bg, const at::Tensor& packed, const at::Tensor& offsets,
                                      const at::Tensor& list, const at::Tensor& tfin, const at::Tensor& ncon,
                                      int64_t C, int64_t N, int64_t W, int64_t H, bool clamp_grad) {
  using V = typename VecFor<S>::type;
  const int tiles_x = int((W + TS - 1) / TS), tiles_y = int((H + TS - 1) / TS);
  const int64_t ntiles = int64_t(tiles_x) * tiles_y;
  const int64_t nbins = C * ntiles;
  const double t0 = now();
  const int nt = num_threads();
  const at::ScalarType dt = packed.scalar_type();
  const size_t gbytes = size_t(nt) * size_t(C * N) * NGS * sizeof(S);
  size_t gbytes_got = 0;
  S* gb = static_cast<S*>(ZeroBlock::get().take(gbytes, gbytes_got));
  struct Guard {  // parks the block again once it is zero, frees it if anything throws before
    void* p;
    size_t n;
    bool clean = false;
    ~Guard() {
      if (clean)
        ZeroBlock::get().give(p, n);
      else
        std::free(p);
    }
  } guard{gb, gbytes_got};
  std::vector<S> gbgbuf(size_t(nt * C * 3), S(0));
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* lst = list.data_ptr<int32_t>();
  const S* pk = packed.data_ptr<S>();
  const S* bgp = bg.data_ptr<S>();
  const S *gip = g_img.data_ptr<S>(), *gap = g_alpha.data_ptr<S>(), *gdp = g_depth.data_ptr<S>();
  const S* tfp = tfin.data_ptr<S>();
  const int32_t* ncp = ncon.data_ptr<int32_t>();
  S* gbg = gbgbuf.data();
  std::vector<int64_t> items = work_order(off, nbins);
  const int64_t HW = H * W;
  const double t1 = now();
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    S* mybuf = gb + int64_t(tid) * C * N * NGS;
    S* mybg = gbg + int64_t(tid) * C * 3;
    // static round-robin over the cost-sorted bins: each thread's share, hence the order of every sum, depends
    // only on the thread count, so gradients are bit-for-bit reproducible (exact training resumption)
#pragma omp for schedule(static, 1)
    for (int64_t it = 0; it < nbins; ++it) {
      const int64_t bn = items[it];
      const int64_t c = bn / ntiles, t = bn % ntiles;
      const int tx0 = int(t % tiles_x) * TS, ty0 = int(t / tiles_x) * TS;
      backward_tile<V>(pk, lst, off[bn], tx0, ty0, int(W), int(H), bgp + 3 * c, gip + 3 * c * HW, gap + c * HW,
                       gdp + c * HW, tfp + c * HW, ncp + c * HW, clamp_grad, mybuf, mybg + 3 * c);
    }
  }
  const double t2 = now();
  at::Tensor g_means = pooled_empty({C, N, 2}, dt), g_conics = pooled_empty({C, N, 3}, dt);
  at::Tensor g_colors = pooled_empty({C, N, 3}, dt), g_opac = pooled_empty({C, N}, dt);
  at::Tensor g_depths = pooled_empty({C, N}, dt), absgrad = pooled_empty({C, N, 2}, dt);
  S *gm = g_means.data_ptr<S>(), *gc = g_conics.data_ptr<S>(), *gcol = g_colors.data_ptr<S>();
  S *go = g_opac.data_ptr<S>(), *gz = g_depths.data_ptr<S>(), *ga = absgrad.data_ptr<S>();
  at::parallel_for(0, C * N, kGrainReduce, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // sum the threads' records and zero them again (the block goes back to ZeroBlock all zeros)
      S acc[NG];
      S* r0 = gb + i * NGS;
      for (int q = 0; q < NG; ++q) {
        acc[q] = r0[q];
        r0[q] = S(0);
      }
      for (int t = 1; t < nt; ++t) {
        S* rt = gb + (int64_t(t) * C * N + i) * NGS;
        for (int q = 0; q < NG; ++q) {
          acc[q] += rt[q];
          rt[q] = S(0);
        }
      }
      gm[2 * i] = acc[GU];
      gm[2 * i + 1] = acc[GV];
      gc[3 * i] = acc[GA];
      gc[3 * i + 1] = acc[GB_];
      gc[3 * i + 2] = acc[GC];
      go[i] = acc[GO];
      gcol[3 * i] = acc[GR];
      gcol[3 * i + 1] = acc[GG];
      gcol[3 * i + 2] = acc[GBL];
      gz[i] = acc[GZ];
      ga[2 * i] = acc[GAU];
      ga[2 * i + 1] = acc[GAV];
    }
  });
  guard.clean = true;
  at::Tensor g_bg = at::empty({C, 3}, at::TensorOptions().dtype(dt));
  for (int64_t q = 0; q < C * 3; ++q) {
    S acc = 0;
    for (int t = 0; t < nt; ++t) acc += gbg[int64_t(t) * C * 3 + q];
    g_bg.data_ptr<S>()[q] = acc;
  }
  at::Tensor stats = at::empty({3}, at::kDouble);
  double* st = stats.data_ptr<double>();
  st[0] = t1 - t0;
  st[1] = t2 - t1;
  st[2] = now() - t2;
  return {g_means, g_conics, g_colors, g_opac, g_depths, g_bg, absgrad, stats};
}

std::vector<at::Tensor> forward(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                const at::Tensor& opac, const at::Tensor& depths, const at::Tensor& radii,
                                const at::Tensor& bg, int64_t W, int64_t H, bool pixel_rect) {
  check_inputs(means2d, conics, colors, opac, depths, radii, bg);
  TORCH_CHECK(W > 0 && H > 0, "image size must be positive");
  if (means2d.scalar_type() == at::kFloat)
    return forward_impl<float>(means2d, conics, colors, opac, depths, radii, bg, W, H, pixel_rect);
  return forward_impl<double>(means2d, conics, colors, opac, depths, radii, bg, W, H, pixel_rect);
}

std::vector<at::Tensor> backward(const at::Tensor& g_img, const at::Tensor& g_alpha, const at::Tensor& g_depth,
                                 const at::Tensor& bg, const at::Tensor& packed, const at::Tensor& offsets,
                                 const at::Tensor& list, const at::Tensor& tfin, const at::Tensor& ncon, int64_t C,
                                 int64_t N, int64_t W, int64_t H, bool clamp_grad) {
  const auto dt = packed.scalar_type();
  for (const at::Tensor* t : {&g_img, &g_alpha, &g_depth, &bg, &tfin}) {
    TORCH_CHECK(t->scalar_type() == dt && t->is_contiguous() && t->device().is_cpu(),
                "gdensify cpu rasterizer backward: bad gradient tensor");
  }
  TORCH_CHECK(g_img.sizes() == at::IntArrayRef({C, H, W, 3}), "grad image must be (C, H, W, 3)");
  TORCH_CHECK(g_alpha.numel() == C * H * W && g_depth.numel() == C * H * W, "grad alpha/depth size");
  if (dt == at::kFloat)
    return backward_impl<float>(g_img, g_alpha, g_depth, bg, packed, offsets, list, tfin, ncon, C, N, W, H,
                                clamp_grad);
  return backward_impl<double>(g_img, g_alpha, g_depth, bg, packed, offsets, list, tfin, ncon, C, N, W, H,
                               clamp_grad);
}

bool has_avx2() { return GDS_HAVE_AVX2; }

// Frees the cached blocks; returns the bytes that were cached.
int64_t release_cache() {
  const int64_t bytes = int64_t(Pool::get().cached());
  Pool::get().clear();
  ZeroBlock::get().clear();
  return bytes;
}

}  // namespace gds

// Registered as torch.ops.<extension name>.{forward, backward, has_avx2}; the namespace is the build's name, so
// variants built with different flags never clash.
TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &gds::forward);
  m.def("backward", &gds::backward);
  m.def("has_avx2", &gds::has_avx2);
  m.def("release_cache", &gds::release_cache);
}
