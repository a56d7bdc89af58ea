// Fused selective scan for CPU, forward and backward (docs/method.md §6.2):
//   dt_t = softplus(delta_t + delta_bias)    (softplus optional, threshold 20 like torch and mamba-ssm)
//   h_t  = exp(dt_t A) ⊙ h_{t-1} + dt_t u_t B_t,   y_t = C_t · h_t + D u_t,   out_t = y_t silu(z_t)
//
// Work is split into blocks of W channels of one batch element (W = one 32-byte SIMD vector: 8 floats or 4
// doubles), one channel per SIMD lane, so the N-state is N vector registers and y_t = C_t · h_t is a sum of vertical
// FMAs (B_t and C_t are shared by the channels of a group). Blocks run in parallel (at::parallel_for); time runs
// sequentially in chunks of kChunk steps. exp(dt A), the bulk of the arithmetic, is a polynomial 2^x on whole
// vectors. The forward stores the state at each chunk start (a checkpoint); the backward sweeps the chunks in
// reverse, recomputing each chunk's states (and their decays, for the whole chunk at once) from its checkpoint.
//
// Layouts (all contiguous): u, delta, z, out: (batch, dim, L); A: (dim, N); D, delta_bias: (dim);
// B, C: (batch, G, L, N) input-dependent (G groups of dim/G channels; note L before N) or (dim, N) time-invariant.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;  // steps per chunk = checkpoint interval
constexpr int64_t kMaxN = 256;  // largest state size (mamba-ssm's limit as well)

// ------------------------------------------------------------------------------------------------ SIMD vectors
// GCC/Clang vector extensions: portable across ISAs (the compiler splits them where registers are narrower).
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef float U __attribute__((vector_size(32), aligned(4), may_alias));  // unaligned access
  static constexpr int W = 8;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef double U __attribute__((vector_size(32), aligned(8), may_alias));
  static constexpr int W = 4;
};

template <typename V, typename T>
inline V vload(const T* p) {
  return *reinterpret_cast<const typename Simd<T>::U*>(p);
}

template <typename V, typename T>
inline void vstore(T* p, const V& v) {
  *reinterpret_cast<typename Simd<T>::U*>(p) = v;
}

template <typename V, typename T>
inline V splat(T x) {
  V v;
  for (int i = 0; i < Simd<T>::W; ++i) v[i] = x;  // a broadcast
  return v;
}

// Pairwise sums in x86 hadd order: [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
inline Simd<float>::V hadd(Simd<float>::V a, Simd<float>::V b) {
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}

inline Simd<double>::V hadd(Simd<double>::V a, Simd<double>::V b) {
  return __builtin_shufflevector(a, b, 0, 4, 2, 6) + __builtin_shufflevector(a, b, 1, 5, 3, 7);
}

// r[i] = sum over the lanes of v[i], for i < W (a transposing reduction of W vectors).
inline Simd<float>::V lane_sums(const Simd<float>::V* v) {
  const auto u0 = hadd(hadd(v[0], v[1]), hadd(v[2], v[3]));
  const auto u1 = hadd(hadd(v[4], v[5]), hadd(v[6], v[7]));
  return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}

inline Simd<double>::V lane_sums(const Simd<double>::V* v) {
  const auto t0 = hadd(v[0], v[1]), t1 = hadd(v[2], v[3]);
  return __builtin_shufflevector(t0, t1, 0, 1, 4, 5) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7);
}

// In-place transpose of a W x W tile held as W vectors (rows -> columns).
inline void transpose(Simd<float>::V* r) {
  using V = Simd<float>::V;
  V t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 2; ++k) {
      s[4 * i + 2 * k] = __builtin_shufflevector(t[4 * i + k], t[4 * i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      s[4 * i + 2 * k + 1] = __builtin_shufflevector(t[4 * i + k], t[4 * i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shufflevector(s[i], s[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = __builtin_shufflevector(s[i], s[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

inline void transpose(Simd<double>::V* r) {
  const auto t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6), t1 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
  const auto t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6), t3 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
  r[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
  r[1] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
  r[2] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
  r[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

// ------------------------------------------------------------------------------------------------ block math
// 2^x for float: x = k + f with k an integer and |f| <= 1/2; 2^f by a degree-6 polynomial (a near-minimax fit,
// relative error about 1e-7), 2^k through the exponent bits. Inputs are clamped to [-126, 127.49]. The loop
// vectorises (the build uses -fno-trapping-math so that the comparisons need no branches); x may alias out.
// 2^f for f in [-0.5, 0.5]: the degree-6 polynomial shared by the scalar and the vector exp2 below (T = float or a
// GCC float vector; the scalar coefficients broadcast).
template <class T>
inline T exp2_poly(T f) {
  T p = f * 1.5345810970757157e-4f + 1.3399930903688073e-3f;
  p = p * f + 9.618489071726799e-3f;
  p = p * f + 5.550328642129898e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  return p * f + 1.0f;
}

inline void exp2_block(const float* x, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float lo = xi > -126.0f ? xi : -126.0f;  // max and min (exact vmaxps / vminps semantics)
    const float v = lo < 127.49f ? lo : 127.49f;
    const float k = std::floor(v + 0.5f), f = v - k;
    const float p = exp2_poly(f);
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    out[i] = p * scale;
  }
}

inline void exp2_block(const double* x, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp2(x[i]);
}

// The same 2^x on one vector, for use inside a loop over steps: rounding to the nearest integer k by adding
// 1.5 * 2^23, whose low mantissa bits then hold k.
inline Simd<float>::V vexp2(Simd<float>::V x) {
  using V = Simd<float>::V;
  typedef int32_t VI __attribute__((vector_size(32)));
  const V lo = splat<V>(-126.0f), hi = splat<V>(127.49f), magic = splat<V>(12582912.0f);
  x = x > lo ? x : lo;
  x = x < hi ? x : hi;
  const V t = x + magic, f = x - (t - magic);
  const V p = exp2_poly(f);
  const VI bits = (reinterpret_cast<const VI&>(t) - 0x4B400000 + 127) << 23;
  return p * reinterpret_cast<const V&>(bits);
}

inline Simd<double>::V vexp2(Simd<double>::V x) {
  for (int j = 0; j < Simd<double>::W; ++j) x[j] = std::exp2(x[j]);
  return x;
}

// out = exp(x), through 2^(x log2 e); x may alias out.
template <typename T>
inline void exp_block(const T* x, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * T(1.44269504088896340736);
  exp2_block(out, out, n);
}

// log1p(e) for e in [0, 1]: 2 atanh(e / (2 + e)) as a series in s^2 <= 1/9 (float), or libm (double).
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e), s2 = s * s;
  float p = 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

inline double log1p_unit(double e) { return std::log1p(e); }

// sp = softplus(x) (= x above 20); if sig: sig = d sp / dx. tmp: 2n scratch values.
template <typename T>
inline void softplus_block(const T* __restrict x, T* __restrict sp, T* __restrict sig, T* __restrict tmp,
                           int64_t n) {
  T* __restrict e = tmp + n;
  for (int64_t i = 0; i < n; ++i) tmp[i] = -std::abs(x[i]);
  exp_block(tmp, e, n);  // exp(-|x|)
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xi = x[i], pos = xi > T(0) ? xi : T(0);
    sp[i] = xi > T(20) ? xi : pos + log1p_unit(e[i]);
  }
  if (sig) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const T xi = x[i];
      sig[i] = xi > T(20) ? T(1) : (xi >= T(0) ? T(1) : e[i]) / (T(1) + e[i]);
    }
  }
}

// ------------------------------------------------------------------------------------------------ problem
// Channels are cut into "joint groups" of Hj channels that share one B row and one C row, each cut into blocks of
// W lanes (the last block of a group may be partial: its extra lanes repeat the group's last channel and their
// results are dropped).
template <typename T>
struct Problem {
  static constexpr int W = Simd<T>::W;
  int64_t batch, dim, L, N, nchunks;
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;  // D, z, bias may be null
  bool softplus, B_var, C_var;
  int64_t GB, GC;        // groups of input-dependent B / C
  int64_t Hj, ngj, nbg;  // channels per joint group, joint groups, blocks per joint group

  int64_t nblocks() const { return batch * ngj * nbg; }
  // channel of lane j of block k in joint group gj
  int64_t channel(int64_t gj, int64_t k, int j) const { return gj * Hj + std::min<int64_t>(k * W + j, Hj - 1); }
  bool valid(int64_t k, int j) const { return k * W + j < Hj; }
  // B_t / C_t rows of a block (input-dependent): advance by N per step
  const T* B_rows(int64_t b, int64_t d0) const { return B + (b * GB + d0 / (dim / GB)) * L * N; }
  const T* C_rows(int64_t b, int64_t d0) const { return C + (b * GC + d0 / (dim / GC)) * L * N; }
};

// Per-thread scratch for one block and one chunk; buffers are time-major with the W lanes innermost.
// NT > 0: the fast path, compiled for N = NT and input-dependent B and C (as a Mamba layer has); NT = 0: any N and
// any B/C layout, decided at run time.
template <typename T, int NT>
struct Block {
  using V = typename Simd<T>::V;
  static constexpr int W = Simd<T>::W;
  static constexpr int64_t kN = NT > 0 ? NT : kMaxN;  // capacity of state-indexed arrays
  const Problem<T>& p;
  int64_t b = 0, gj = 0, k = 0, d0 = 0, ch[W], rows[W];  // rows[j]: offset of lane j's (b, channel) row
  std::vector<T> X, DT, SIG, U, DTU, Z, DY, Y, SZ, TMP, DA, H;  // (kChunk, W) or (kChunk, N, W)
  std::vector<V> Al, Al2, Bl, Cl;  // (N) lane vectors: A, A log2(e), time-invariant B, C

  explicit Block(const Problem<T>& p)
      : p(p), X(kChunk * W), DT(kChunk * W), SIG(kChunk * W), U(kChunk * W), DTU(kChunk * W),
        Z(kChunk * W), DY(kChunk * W), Y(kChunk * W), SZ(kChunk * W), TMP(kChunk * std::max<int64_t>(p.N, 2) * W),
        DA(kChunk * p.N * W), H(kChunk * p.N * W), Al(p.N), Al2(p.N), Bl(p.N), Cl(p.N) {}

  // the state size and whether B / C are input-dependent: compile-time constants when NT > 0
  static constexpr int64_t state_size(const Problem<T>& p) { return NT > 0 ? NT : p.N; }
  static constexpr bool B_var(const Problem<T>& p) { return NT > 0 || p.B_var; }
  static constexpr bool C_var(const Problem<T>& p) { return NT > 0 || p.C_var; }

  void start(int64_t blk) {
    const int64_t N = state_size(p);
    b = blk / (p.ngj * p.nbg);
    gj = (blk / p.nbg) % p.ngj;
    k = blk % p.nbg;
    for (int j = 0; j < W; ++j) {
      ch[j] = p.channel(gj, k, j);
      rows[j] = (b * p.dim + ch[j]) * p.L;
    }
    d0 = ch[0];
    for (int64_t n = 0; n < N; ++n) {
      for (int j = 0; j < W; ++j) {
        Al[n][j] = p.A[ch[j] * N + n];
        Al2[n][j] = Al[n][j] * T(1.44269504088896340736);
        Bl[n][j] = p.B_var ? T(0) : p.B[ch[j] * N + n];
        Cl[n][j] = p.C_var ? T(0) : p.C[ch[j] * N + n];
      }
    }
  }

  int64_t row(int j, int64_t t0) const { return rows[j] + t0; }

  // (kChunk, W) buffer <- rows of a (batch, dim, L) tensor, W x W tiles at a time
  void gather(const T* src, int64_t t0, int64_t Tn, T* dst) const {
    int64_t t = 0;
    for (; t + W <= Tn; t += W) {
      V r[W];
      for (int j = 0; j < W; ++j) r[j] = vload<V>(src + row(j, t0 + t));
      transpose(r);
      for (int i = 0; i < W; ++i) vstore(dst + (t + i) * W, r[i]);
    }
    for (; t < Tn; ++t) {
      for (int j = 0; j < W; ++j) dst[t * W + j] = src[row(j, t0 + t)];
    }
  }

  // rows of a (batch, dim, L) tensor <- (kChunk, W) buffer, valid lanes only
  void scatter(const T* src, int64_t t0, int64_t Tn, T* dst) const {
    int64_t t = 0;
    if (p.valid(k, W - 1)) {  // a full block
      for (; t + W <= Tn; t += W) {
        V r[W];
        for (int i = 0; i < W; ++i) r[i] = vload<V>(src + (t + i) * W);
        transpose(r);
        for (int j = 0; j < W; ++j) vstore(dst + row(j, t0 + t), r[j]);
      }
    }
    for (int j = 0; j < W; ++j) {
      if (!p.valid(k, j)) continue;
      for (int64_t i = t; i < Tn; ++i) dst[row(j, t0 + i)] = src[i * W + j];
    }
  }

  // DT, DTU, U (and SIG = d dt / d delta if want_sig, DA = exp(dt A) if want_decay) for chunk c.
  // Returns the chunk length.
  int64_t prologue(int64_t c, bool want_sig, bool want_decay) {
    const int64_t N = state_size(p);
    const int64_t t0 = c * kChunk, Tn = std::min(kChunk, p.L - t0), n_tw = Tn * W;
    gather(p.delta, t0, Tn, X.data());
    gather(p.u, t0, Tn, U.data());
    if (p.bias) {
      for (int64_t t = 0; t < Tn; ++t) {
        for (int j = 0; j < W; ++j) X[t * W + j] += p.bias[ch[j]];
      }
    }
    if (p.softplus) {
      softplus_block(X.data(), DT.data(), want_sig ? SIG.data() : nullptr, TMP.data(), n_tw);
    } else {
      std::copy(X.begin(), X.begin() + n_tw, DT.begin());
    }
    for (int64_t i = 0; i < n_tw; ++i) DTU[i] = DT[i] * U[i];
    if (!want_decay) return Tn;
    for (int64_t t = 0; t < Tn; ++t) {
      const V dt = vload<V>(&DT[t * W]);
      for (int64_t n = 0; n < N; ++n) vstore(&TMP[(t * N + n) * W], dt * Al2[n]);
    }
    exp2_block(TMP.data(), DA.data(), Tn * N * W);  // exp(dt A)
    return Tn;
  }

  // B_t[n] / C_t[n] as lane vectors; rows: B_chunk / C_chunk of the chunk (null when time-invariant)
  V B_at(const T* rows, int64_t t, int64_t n) const {
    return B_var(p) ? splat<V>(rows[t * state_size(p) + n]) : Bl[n];
  }
  V C_at(const T* rows, int64_t t, int64_t n) const {
    return C_var(p) ? splat<V>(rows[t * state_size(p) + n]) : Cl[n];
  }
  const T* B_chunk(int64_t t0) const { return B_var(p) ? p.B_rows(b, d0) + t0 * state_size(p) : nullptr; }
  const T* C_chunk(int64_t t0) const { return C_var(p) ? p.C_rows(b, d0) + t0 * state_size(p) : nullptr; }

  // States of chunk c from h (the state before it); h becomes the last state. STORE_H: H[t] = h_t;
  // WANT_Y: Y[t] = C_t · h_t; DECAY_INLINE: exp(dt A) evaluated here rather than read from DA.
  template <bool STORE_H, bool WANT_Y, bool DECAY_INLINE>
  void recur(int64_t c, int64_t Tn, V* __restrict h) {
    const int64_t N = state_size(p);
    const T* Brow = B_chunk(c * kChunk);
    const T* Crow = C_chunk(c * kChunk);
    for (int64_t t = 0; t < Tn; ++t) {
      const V w = vload<V>(&DTU[t * W]), dt = vload<V>(&DT[t * W]);
      V y{};
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        const V a = DECAY_INLINE ? vexp2(dt * Al2[n]) : vload<V>(&DA[(t * N + n) * W]);
        h[n] = a * h[n] + w * B_at(Brow, t, n);
        if (STORE_H) vstore(&H[(t * N + n) * W], h[n]);
        if (WANT_Y) y += C_at(Crow, t, n) * h[n];
      }
      if (WANT_Y) vstore(&Y[t * W], y);
    }
  }

  // Z = z of chunk c and SZ = sigmoid(z), both (Tn, W).
  void gate(int64_t c, int64_t Tn) {
    gather(p.z, c * kChunk, Tn, Z.data());
    for (int64_t i = 0; i < Tn * W; ++i) TMP[i] = -Z[i];
    exp_block(TMP.data(), SZ.data(), Tn * W);
    for (int64_t i = 0; i < Tn * W; ++i) SZ[i] = T(1) / (T(1) + SZ[i]);
  }
};

// ------------------------------------------------------------------------------------------------ forward
// ckpt: (nblocks, nchunks, N, W), the state before each chunk.
template <typename T, int NT>
void forward(const Problem<T>& p, T* out, T* last, T* ckpt) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  at::parallel_for(0, p.nblocks(), 1, [&](int64_t begin, int64_t end) {
    Block<T, NT> k(p);
    const int64_t N = Block<T, NT>::state_size(p);
    V h[Block<T, NT>::kN];
    for (int64_t blk = begin; blk < end; ++blk) {
      k.start(blk);
      T Dl[W];
      for (int j = 0; j < W; ++j) Dl[j] = p.D ? p.D[k.ch[j]] : T(0);
      for (int64_t n = 0; n < N; ++n) h[n] = V{};
      for (int64_t c = 0; c < p.nchunks; ++c) {
        for (int64_t n = 0; n < N; ++n) vstore(&ckpt[((blk * p.nchunks + c) * N + n) * W], h[n]);
        const int64_t Tn = k.prologue(c, false, false);
        k.template recur<false, true, true>(c, Tn, h);
        for (int64_t t = 0; t < Tn; ++t) {
          for (int j = 0; j < W; ++j) k.Y[t * W + j] += Dl[j] * k.U[t * W + j];
        }
        if (p.z) {
          k.gate(c, Tn);
          for (int64_t i = 0; i < Tn * W; ++i) k.Y[i] *= k.Z[i] * k.SZ[i];
        }
        k.scatter(k.Y.data(), c * kChunk, Tn, out);
      }
      for (int j = 0; j < W; ++j) {
        if (!p.valid(k.k, j)) continue;
        for (int64_t n = 0; n < N; ++n) last[(k.b * p.dim + k.ch[j]) * N + n] = h[n][j];
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward
// Gradient outputs. du, ddelta, dz: (batch, dim, L). dA, dD, ddelta_bias and time-invariant dB/dC: per-(b, d)
// partials (batch, dim, N) or (batch, dim), summed over batch afterwards. Input-dependent dB/dC are summed over the
// channels of a group: each work item (a run of `bpi` blocks inside one joint group) owns a slot of a
// (slots, batch, G, L, N) partial buffer, summed over slots afterwards.
template <typename T>
struct Grads {
  T *du, *ddelta, *dz, *dA, *dD, *dbias, *dB, *dC;
  int64_t bpi;  // blocks per work item
  const T* dout;
  const T* dlast;  // (batch, dim, N) or null

  // slot of the work item starting at block k of joint group gj, for groups of H channels
  int64_t slot(const Problem<T>& p, int64_t gj, int64_t k, int64_t H) const {
    const int64_t items_per_group = p.nbg / bpi;
    return ((gj * p.Hj) % H) / p.Hj * items_per_group + k / bpi;
  }
};

template <typename T, int NT>
void backward(const Problem<T>& p, const T* ckpt, const Grads<T>& g) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  const int64_t nitems = p.nblocks() / g.bpi;
  const int64_t HB = p.dim / p.GB, HC = p.dim / p.GC;
  at::parallel_for(0, nitems, 1, [&](int64_t begin, int64_t end) {
    Block<T, NT> k(p);
    const int64_t N = Block<T, NT>::state_size(p);
    constexpr int64_t NV = Block<T, NT>::kN;
    V h[NV], gnext[NV], dA_acc[NV], dBl[NV], dCl[NV], dBv[NV], dCv[NV];
    std::vector<T> DOUT(kChunk * W), DU(kChunk * W), DDELTA(kChunk * W), DZ(kChunk * W);
    for (int64_t item = begin; item < end; ++item) {
      for (int64_t blk = item * g.bpi; blk < (item + 1) * g.bpi; ++blk) {
        k.start(blk);
        T* dB_rows = Block<T, NT>::B_var(p) ? g.dB + ((g.slot(p, k.gj, k.k, HB) * p.batch + k.b) * p.GB + k.d0 / HB) * p.L * N
                             : nullptr;
        T* dC_rows = Block<T, NT>::C_var(p) ? g.dC + ((g.slot(p, k.gj, k.k, HC) * p.batch + k.b) * p.GC + k.d0 / HC) * p.L * N
                             : nullptr;
        V Dl{}, valid{};
        for (int j = 0; j < W; ++j) {
          Dl[j] = p.D ? p.D[k.ch[j]] : T(0);
          valid[j] = p.valid(k.k, j) ? T(1) : T(0);
        }
        for (int64_t n = 0; n < N; ++n) {
          for (int j = 0; j < W; ++j) {
            gnext[n][j] = g.dlast && p.valid(k.k, j) ? g.dlast[(k.b * p.dim + k.ch[j]) * N + n] : T(0);
          }
          dA_acc[n] = dBl[n] = dCl[n] = V{};
        }
        V dD_acc{}, dbias_acc{};
        for (int64_t c = p.nchunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk;
          const T* h0 = ckpt + (blk * p.nchunks + c) * N * W;
          const int64_t Tn = k.prologue(c, p.softplus, true);
          for (int64_t n = 0; n < N; ++n) h[n] = vload<V>(&h0[n * W]);
          if (p.z) {
            k.template recur<true, true, false>(c, Tn, h);
          } else {
            k.template recur<true, false, false>(c, Tn, h);
          }
          k.gather(g.dout, t0, Tn, DOUT.data());
          // out = (y + D u) silu(z): dy (zero on padding lanes), dz
          if (p.z) {
            k.gate(c, Tn);
            for (int64_t t = 0; t < Tn; ++t) {
              const V s = vload<V>(&k.SZ[t * W]), z = vload<V>(&k.Z[t * W]), dout = vload<V>(&DOUT[t * W]);
              const V pre = vload<V>(&k.Y[t * W]) + Dl * vload<V>(&k.U[t * W]);
              vstore(&DZ[t * W], dout * pre * s * (T(1) + z * (T(1) - s)));
              vstore(&k.DY[t * W], dout * z * s * valid);
            }
          } else {
            for (int64_t t = 0; t < Tn; ++t) vstore(&k.DY[t * W], vload<V>(&DOUT[t * W]) * valid);
          }
          const T* Brow = k.B_chunk(t0);
          const T* Crow = k.C_chunk(t0);
          // reverse sweep: g_t = dy_t C_t + exp(dt_{t+1} A) ⊙ g_{t+1}, and every gradient that uses g_t
          for (int64_t t = Tn - 1; t >= 0; --t) {
            const V dy = vload<V>(&k.DY[t * W]), w = vload<V>(&k.DTU[t * W]), dt = vload<V>(&k.DT[t * W]);
            V sAh{}, sGB{};
#pragma GCC unroll 16
            for (int64_t n = 0; n < N; ++n) {
              const V gt = dy * k.C_at(Crow, t, n) + gnext[n];
              const V a = vload<V>(&k.DA[(t * N + n) * W]);
              const V hp = t > 0 ? vload<V>(&k.H[((t - 1) * N + n) * W]) : vload<V>(&h0[n * W]);
              const V gah = gt * a * hp;
              dA_acc[n] += gah * dt;
              sAh += gah * k.Al[n];
              sGB += gt * k.B_at(Brow, t, n);
              const V gb = gt * w, hc = dy * vload<V>(&k.H[(t * N + n) * W]);
              if (Block<T, NT>::B_var(p)) dBv[n] = gb; else dBl[n] += gb;
              if (Block<T, NT>::C_var(p)) dCv[n] = hc; else dCl[n] += hc;
              gnext[n] = a * gt;
            }
            // input-dependent dB_t, dC_t: sums over the lanes (channels), W states at a time
            for (auto [rows, v] : {std::pair<T*, V*>{dB_rows, dBv}, std::pair<T*, V*>{dC_rows, dCv}}) {
              if (!rows) continue;
              T* r = rows + (t0 + t) * N;
              int64_t n = 0;
              for (; n + W <= N; n += W) vstore(&r[n], vload<V>(&r[n]) + lane_sums(&v[n]));
              for (; n < N; ++n) {
                T s = 0;
                for (int j = 0; j < W; ++j) s += v[n][j];
                r[n] += s;
              }
            }
            const V u = vload<V>(&k.U[t * W]);
            const V ddt = sAh + u * sGB;
            const V ddelta = p.softplus ? ddt * vload<V>(&k.SIG[t * W]) : ddt;
            vstore(&DU[t * W], dy * Dl + dt * sGB);
            vstore(&DDELTA[t * W], ddelta);
            dbias_acc += ddelta;
            dD_acc += dy * u;
          }
          k.scatter(DU.data(), t0, Tn, g.du);
          k.scatter(DDELTA.data(), t0, Tn, g.ddelta);
          if (p.z) k.scatter(DZ.data(), t0, Tn, g.dz);
        }
        for (int j = 0; j < W; ++j) {
          if (!p.valid(k.k, j)) continue;
          const int64_t bd = k.b * p.dim + k.ch[j];
          for (int64_t n = 0; n < N; ++n) {
            g.dA[bd * N + n] = dA_acc[n][j];
            if (!p.B_var) g.dB[bd * N + n] = dBl[n][j];
            if (!p.C_var) g.dC[bd * N + n] = dCl[n][j];
          }
          g.dD[bd] = dD_acc[j];
          g.dbias[bd] = dbias_acc[j];
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ bindings
template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& bias, bool softplus) {
  Problem<T> p;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.L = u.size(2);
  p.N = A.size(1);
  p.nchunks = (p.L + kChunk - 1) / kChunk;
  p.u = u.data_ptr<T>();
  p.delta = delta.data_ptr<T>();
  p.A = A.data_ptr<T>();
  p.B = B.data_ptr<T>();
  p.C = C.data_ptr<T>();
  p.D = D ? D->data_ptr<T>() : nullptr;
  p.z = z ? z->data_ptr<T>() : nullptr;
  p.bias = bias ? bias->data_ptr<T>() : nullptr;
  p.softplus = softplus;
  p.B_var = B.dim() == 4;
  p.C_var = C.dim() == 4;
  p.GB = p.B_var ? B.size(1) : 1;
  p.GC = p.C_var ? C.size(1) : 1;
  p.Hj = std::gcd(p.dim / p.GB, p.dim / p.GC);
  p.ngj = p.dim / p.Hj;
  p.nbg = (p.Hj + Problem<T>::W - 1) / Problem<T>::W;
  return p;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u, delta must be (batch, dim, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.size(1) <= kMaxN,
              "selective_scan_cpu: A must be (dim, N<=256)");
  for (const at::Tensor* M : {&B, &C}) {
    TORCH_CHECK((M->dim() == 2 && M->sizes() == A.sizes()) ||
                    (M->dim() == 4 && M->size(0) == u.size(0) && M->size(1) > 0 && u.size(1) % M->size(1) == 0 &&
                     M->size(2) == u.size(2) && M->size(3) == A.size(1)),
                "selective_scan_cpu: B, C must be (dim, N) or (batch, G, L, N)");
  }
  std::vector<at::Tensor> all = {u, delta, A, B, C};
  for (const auto* o : {&D, &z, &bias}) {
    if (*o) all.push_back(**o);
  }
  for (const auto& t : all) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == u.scalar_type(),
                "selective_scan_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
}

// Dispatch on the dtype (float32, float64).
template <typename F>
void with_dtype(const at::Tensor& u, F&& f) {
  if (u.scalar_type() == at::kFloat) {
    f(float{});
  } else {
    TORCH_CHECK(u.scalar_type() == at::kDouble, "selective_scan_cpu: float32 or float64 inputs expected, got ",
                u.scalar_type());
    f(double{});
  }
}

// Dispatch: the fast path (N = 16, Mamba's d_state, input-dependent B and C) for float, the generic one otherwise.
template <typename T, typename F>
void with_N(const Problem<T>& p, F&& f) {
  if (std::is_same_v<T, float> && p.N == 16 && p.B_var && p.C_var) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

// Returns out (batch, dim, L), last state (batch, dim, N), checkpoints (opaque, for bwd).
std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                            bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  const int64_t dim = u.size(1), N = A.size(1);
  auto out = at::empty_like(u);
  auto last = at::zeros({u.size(0), dim, N}, u.options());
  at::Tensor ckpt;
  with_dtype(u, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto p = make_problem<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    ckpt = at::empty({p.nblocks(), p.nchunks, N, Simd<scalar_t>::W}, u.options());
    if (p.L == 0) return;
    with_N(p, [&](auto NT) {
      forward<scalar_t, decltype(NT)::value>(p, out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(),
                                              ckpt.data_ptr<scalar_t>());
    });
  });
  return {out, last, ckpt};
}

// Blocks per backward work item: the largest divisor of the blocks per joint group that still gives every thread
// about 4 items (fewer, larger items mean fewer dB/dC partial slots).
int64_t blocks_per_item(int64_t nblocks_total, int64_t nbg) {
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  for (int64_t s = nbg; s >= 1; --s) {
    if (nbg % s == 0 && nblocks_total / s >= want) return s;
  }
  return 1;
}

// Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (empty tensors for D, z, delta_bias not given).
std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                            bool softplus, const at::Tensor& ckpt, const at::Tensor& dout,
                            const std::optional<at::Tensor>& dlast) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "selective_scan_cpu: dout must be contiguous like u");
  TORCH_CHECK(!dlast || (dlast->is_contiguous() && dlast->scalar_type() == u.scalar_type()),
              "selective_scan_cpu: dlast must be contiguous like u");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1);
  const bool B_var = B.dim() == 4, C_var = C.dim() == 4;
  auto du = at::zeros_like(u), ddelta = at::zeros_like(u);
  auto dz = z ? at::zeros_like(u) : at::empty({0}, u.options());
  auto dA = at::zeros({batch, dim, N}, u.options());
  auto dD = at::zeros({batch, dim}, u.options()), dbias = at::zeros({batch, dim}, u.options());
  at::Tensor dB, dC;
  with_dtype(u, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto p = make_problem<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    TORCH_CHECK(ckpt.scalar_type() == u.scalar_type() && ckpt.is_contiguous() &&
                    ckpt.sizes() == at::IntArrayRef({p.nblocks(), p.nchunks, N, Simd<scalar_t>::W}),
                "selective_scan_cpu: checkpoints do not match the inputs");
    Grads<scalar_t> g;
    g.bpi = blocks_per_item(p.nblocks(), p.nbg);
    const int64_t slots_B = (dim / p.GB) / p.Hj * (p.nbg / g.bpi), slots_C = (dim / p.GC) / p.Hj * (p.nbg / g.bpi);
    dB = B_var ? at::zeros({slots_B, batch, p.GB, L, N}, u.options()) : at::zeros({batch, dim, N}, u.options());
    dC = C_var ? at::zeros({slots_C, batch, p.GC, L, N}, u.options()) : at::zeros({batch, dim, N}, u.options());
    if (L == 0) return;
    g.du = du.data_ptr<scalar_t>();
    g.ddelta = ddelta.data_ptr<scalar_t>();
    g.dz = z ? dz.data_ptr<scalar_t>() : nullptr;
    g.dA = dA.data_ptr<scalar_t>();
    g.dD = dD.data_ptr<scalar_t>();
    g.dbias = dbias.data_ptr<scalar_t>();
    g.dB = dB.data_ptr<scalar_t>();
    g.dC = dC.data_ptr<scalar_t>();
    g.dout = dout.data_ptr<scalar_t>();
    g.dlast = dlast ? dlast->data_ptr<scalar_t>() : nullptr;
    with_N(p, [&](auto NT) { backward<scalar_t, decltype(NT)::value>(p, ckpt.data_ptr<scalar_t>(), g); });
  });
  auto empty = at::empty({0}, u.options());
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), D ? dD.sum(0) : empty, dz, bias ? dbias.sum(0) : empty};
}

}  // namespace

TORCH_LIBRARY(mm2ct_scan, m) {
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
        "bool softplus) -> Tensor[]");
  m.def("bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
        "bool softplus, Tensor ckpt, Tensor dout, Tensor? dlast) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(mm2ct_scan, CPU, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
}
