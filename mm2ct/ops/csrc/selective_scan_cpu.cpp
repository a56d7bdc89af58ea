// Fused selective scan for CPU, forward and backward (docs/method.md §6.2):
//   dt_t = softplus(delta_t + delta_bias)    (softplus optional, threshold 20 like torch and mamba-ssm)
//   h_t  = exp(dt_t A) ⊙ h_{t-1} + dt_t u_t B_t,   y_t = C_t · h_t + D u_t,   out_t = y_t silu(z_t)
// Parallel over (batch, channel) with at::parallel_for; the N-vector state lives in registers; time is sequential,
// in chunks of kChunk steps: exp(dt A) is evaluated for a whole chunk at once (a vectorised loop), the forward
// stores the state at each chunk start (a checkpoint), and the backward sweeps the chunks in reverse, recomputing
// each chunk's states from its checkpoint.
//
// Layouts (all contiguous): u, delta, z, out: (batch, dim, L); A: (dim, N); D, delta_bias: (dim);
// B, C: (batch, G, L, N) input-dependent (G groups of dim/G channels; note L before N) or (dim, N) time-invariant.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/sum.h>
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

// ------------------------------------------------------------------------------------------------ block math
// exp for float: Cephes polynomial (~1 ulp); inputs are clamped to [-87.3, 88.4]. The loop vectorises.
inline void exp_block(const float* __restrict x, float* __restrict out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::min(std::max(x[i], -87.33654f), 88.3762626647949f);
    const float fx = std::floor(v * 1.44269504088896341f + 0.5f);
    const float r = v - fx * 0.693359375f + fx * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    out[i] = (p * r * r + r + 1.0f) * scale;
  }
}

inline void exp_block(const double* __restrict x, double* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i]);
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

// sp = softplus(x) (= x above 20); if sig: sig = d sp / dx. tmp: n scratch values.
template <typename T>
inline void softplus_block(const T* __restrict x, T* __restrict sp, T* __restrict sig, T* __restrict tmp,
                           int64_t n) {
  for (int64_t i = 0; i < n; ++i) tmp[i] = -std::abs(x[i]);
  exp_block(tmp, tmp, n);  // e = exp(-|x|)
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T e = tmp[i];
    sp[i] = x[i] > T(20) ? x[i] : std::max(x[i], T(0)) + log1p_unit(e);
  }
  if (sig) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const T e = tmp[i];
      sig[i] = x[i] > T(20) ? T(1) : (x[i] >= T(0) ? T(1) : e) / (T(1) + e);
    }
  }
}

// ------------------------------------------------------------------------------------------------ problem
template <typename T>
struct Problem {
  int64_t batch, dim, L, N, nchunks;
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;  // D, z, bias may be null
  bool softplus, B_var, C_var;
  int64_t GB, GC;  // groups of input-dependent B / C

  const T* B_row(int64_t b, int64_t d) const { return B_var ? B + (b * GB + d / (dim / GB)) * L * N : B + d * N; }
  const T* C_row(int64_t b, int64_t d) const { return C_var ? C + (b * GC + d / (dim / GC)) * L * N : C + d * N; }
  int64_t sB() const { return B_var ? N : 0; }  // time stride of B_row
  int64_t sC() const { return C_var ? N : 0; }
};

// Per-thread scratch and the two building blocks shared by forward and backward.
template <typename T, int NT>
struct Chunk {
  const Problem<T>& p;
  const int64_t N;
  std::vector<T> x, dt, sig, dtu, dy, gate, tmp, dA, H, G;

  explicit Chunk(const Problem<T>& p)
      : p(p), N(NT > 0 ? NT : p.N), x(kChunk), dt(kChunk), sig(kChunk), dtu(kChunk), dy(kChunk), gate(kChunk),
        tmp(kChunk * N), dA(kChunk * N), H(kChunk * N), G(kChunk * N) {}

  // dt, dtu, dA = exp(dt A) for chunk c of row (b, d); sig = d dt / d delta if want_sig. Returns the chunk length.
  int64_t prologue(int64_t b, int64_t d, int64_t c, bool want_sig) {
    const int64_t t0 = c * kChunk, Tn = std::min(kChunk, p.L - t0), row = (b * p.dim + d) * p.L + t0;
    const T bias = p.bias ? p.bias[d] : T(0);
    for (int64_t t = 0; t < Tn; ++t) x[t] = p.delta[row + t] + bias;
    if (p.softplus) {
      softplus_block(x.data(), dt.data(), want_sig ? sig.data() : nullptr, tmp.data(), Tn);
    } else {
      std::copy(x.begin(), x.begin() + Tn, dt.begin());
    }
    for (int64_t t = 0; t < Tn; ++t) dtu[t] = dt[t] * p.u[row + t];
    const T* A_d = p.A + d * N;
    for (int64_t t = 0; t < Tn; ++t) {
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) tmp[t * N + n] = dt[t] * A_d[n];
    }
    exp_block(tmp.data(), dA.data(), Tn * N);
    return Tn;
  }

  // H[t] = states of the chunk starting from h0 (the state before it); returns nothing, H[Tn-1] is the last.
  void recur(const T* __restrict h0, const T* __restrict B_t0, int64_t Tn) {
    T h[NT > 0 ? NT : kMaxN];
    for (int64_t n = 0; n < N; ++n) h[n] = h0[n];
    const int64_t sB = p.sB();
    for (int64_t t = 0; t < Tn; ++t) {
      const T* __restrict Bt = B_t0 + t * sB;
      const T* __restrict a = dA.data() + t * N;
      T* __restrict Ht = H.data() + t * N;
      const T w = dtu[t];
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        h[n] = a[n] * h[n] + w * Bt[n];
        Ht[n] = h[n];
      }
    }
  }

  // y_t = C_t · H_t for the chunk, into y.
  void readout(const T* __restrict C_t0, int64_t Tn, T* __restrict y) const {
    const int64_t sC = p.sC();
    for (int64_t t = 0; t < Tn; ++t) {
      const T* __restrict Ct = C_t0 + t * sC;
      const T* __restrict Ht = H.data() + t * N;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t n = 0; n < N; ++n) acc += Ct[n] * Ht[n];
      y[t] = acc;
    }
  }

  // gate = sigmoid(z) for the chunk.
  void sigmoid_z(const T* __restrict zc, int64_t Tn) {
    for (int64_t t = 0; t < Tn; ++t) tmp[t] = -zc[t];
    exp_block(tmp.data(), gate.data(), Tn);
    for (int64_t t = 0; t < Tn; ++t) gate[t] = T(1) / (T(1) + gate[t]);
  }
};

// ------------------------------------------------------------------------------------------------ forward
template <typename T, int NT>
void forward(const Problem<T>& p, T* out, T* last, T* ckpt) {
  at::parallel_for(0, p.batch * p.dim, 1, [&](int64_t begin, int64_t end) {
    Chunk<T, NT> k(p);
    const int64_t N = k.N;
    std::vector<T> h(N);
    for (int64_t bd = begin; bd < end; ++bd) {
      const int64_t b = bd / p.dim, d = bd % p.dim;
      const T* B_r = p.B_row(b, d);
      const T* C_r = p.C_row(b, d);
      const T Dd = p.D ? p.D[d] : T(0);
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t c = 0; c < p.nchunks; ++c) {
        const int64_t t0 = c * kChunk, row = bd * p.L + t0;
        std::copy(h.begin(), h.end(), ckpt + (bd * p.nchunks + c) * N);
        const int64_t Tn = k.prologue(b, d, c, false);
        k.recur(h.data(), B_r + t0 * p.sB(), Tn);
        std::copy(k.H.begin() + (Tn - 1) * N, k.H.begin() + Tn * N, h.begin());
        T* o = out + row;
        k.readout(C_r + t0 * p.sC(), Tn, o);
        for (int64_t t = 0; t < Tn; ++t) o[t] += Dd * p.u[row + t];
        if (p.z) {
          k.sigmoid_z(p.z + row, Tn);
          for (int64_t t = 0; t < Tn; ++t) o[t] *= p.z[row + t] * k.gate[t];
        }
      }
      std::copy(h.begin(), h.end(), last + bd * N);
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward
// Gradient buffers. dB/dC of input-dependent B/C are summed over the channels of a group; each work item owns a
// block of S channels inside one group and writes its own slice of a (ngroups_blocks, batch, G, L, N) partial
// buffer, reduced afterwards; time-invariant dB/dC and dA, dD, ddelta_bias get per-(b, d) partials.
template <typename T>
struct Grads {
  T *du, *ddelta, *dz;    // (batch, dim, L); dz may be null
  T *dA, *dD, *dbias;     // (batch, dim, N), (batch, dim), (batch, dim) partials
  T *dB, *dC;             // partials, see dB_row / dC_row
  int64_t S;              // channels per work item
  const T* dout;
  const T* dlast;         // (batch, dim, N) or null

  T* d_row(T* base, bool var, int64_t G, const Problem<T>& p, int64_t b, int64_t d) const {
    if (!var) return base + (b * p.dim + d) * p.N;
    const int64_t H = p.dim / G, j = (d % H) / S;
    return base + ((j * p.batch + b) * G + d / H) * p.L * p.N;
  }
};

template <typename T, int NT>
void backward(const Problem<T>& p, const T* ckpt, const Grads<T>& g) {
  const int64_t nblocks = p.dim / g.S;
  at::parallel_for(0, p.batch * nblocks, 1, [&](int64_t begin, int64_t end) {
    Chunk<T, NT> k(p);
    const int64_t N = k.N;
    T gnext[NT > 0 ? NT : kMaxN], dA_acc[NT > 0 ? NT : kMaxN];
    std::vector<T> y(kChunk);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / nblocks, d0 = (item % nblocks) * g.S;
      for (int64_t d = d0; d < d0 + g.S; ++d) {
        const int64_t bd = b * p.dim + d;
        const T* B_r = p.B_row(b, d);
        const T* C_r = p.C_row(b, d);
        T* dB_r = g.d_row(g.dB, p.B_var, p.GB, p, b, d);
        T* dC_r = g.d_row(g.dC, p.C_var, p.GC, p, b, d);
        const T* A_d = p.A + d * N;
        const T Dd = p.D ? p.D[d] : T(0);
        for (int64_t n = 0; n < N; ++n) {
          gnext[n] = g.dlast ? g.dlast[bd * N + n] : T(0);
          dA_acc[n] = 0;
        }
        T dD_acc = 0, dbias_acc = 0;
        for (int64_t c = p.nchunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, row = bd * p.L + t0;
          const T* h0 = ckpt + (bd * p.nchunks + c) * N;
          const int64_t Tn = k.prologue(b, d, c, p.softplus);
          const T* B_c = B_r + t0 * p.sB();
          const T* C_c = C_r + t0 * p.sC();
          const int64_t sB = p.sB(), sC = p.sC();
          T* dB_c = dB_r + t0 * sB;
          T* dC_c = dC_r + t0 * sC;
          k.recur(h0, B_c, Tn);
          const T* u = p.u + row;
          const T* dout = g.dout + row;
          // out = (y + D u) silu(z): dy, dz
          if (p.z) {
            const T* z = p.z + row;
            k.readout(C_c, Tn, y.data());
            k.sigmoid_z(z, Tn);
            for (int64_t t = 0; t < Tn; ++t) {
              const T s = k.gate[t], pre = y[t] + Dd * u[t];
              g.dz[row + t] = dout[t] * pre * s * (T(1) + z[t] * (T(1) - s));
              k.dy[t] = dout[t] * z[t] * s;
            }
          } else {
            std::copy(dout, dout + Tn, k.dy.begin());
          }
          // adjoint of the state, sequential: g_t = dy_t C_t + exp(dt_{t+1} A) ⊙ g_{t+1}
          for (int64_t t = Tn - 1; t >= 0; --t) {
            const T* __restrict Ct = C_c + t * sC;
            const T* __restrict a = k.dA.data() + t * N;
            T* __restrict Gt = k.G.data() + t * N;
            const T w = k.dy[t];
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) {
              const T gt = w * Ct[n] + gnext[n];
              Gt[n] = gt;
              gnext[n] = a[n] * gt;
            }
          }
          // everything else is independent across steps
          for (int64_t t = 0; t < Tn; ++t) {
            const T* __restrict Gt = k.G.data() + t * N;
            const T* __restrict Ht = k.H.data() + t * N;
            const T* __restrict hp = t > 0 ? k.H.data() + (t - 1) * N : h0;
            const T* __restrict a = k.dA.data() + t * N;
            const T* __restrict Bt = B_c + t * sB;
            T* __restrict dBt = dB_c + t * sB;
            T* __restrict dCt = dC_c + t * sC;
            const T dt = k.dt[t], dtu = k.dtu[t], w = k.dy[t];
            T sAh = 0, sGB = 0;
#pragma omp simd reduction(+ : sAh, sGB)
            for (int64_t n = 0; n < N; ++n) {
              const T gah = Gt[n] * a[n] * hp[n];
              dA_acc[n] += gah * dt;
              sAh += gah * A_d[n];
              sGB += Gt[n] * Bt[n];
              dBt[n] += Gt[n] * dtu;
              dCt[n] += w * Ht[n];
            }
            const T ddt = sAh + u[t] * sGB;
            const T ddelta = p.softplus ? ddt * k.sig[t] : ddt;
            g.du[row + t] = w * Dd + dt * sGB;
            g.ddelta[row + t] = ddelta;
            dD_acc += w * u[t];
            dbias_acc += ddelta;
          }
        }
        for (int64_t n = 0; n < N; ++n) g.dA[bd * N + n] = dA_acc[n];
        g.dD[bd] = dD_acc;
        g.dbias[bd] = dbias_acc;
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
  return p;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u, delta must be (batch, dim, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.size(1) <= kMaxN, "selective_scan_cpu: A must be (dim, N<=256)");
  for (const at::Tensor* M : {&B, &C}) {
    TORCH_CHECK((M->dim() == 2 && M->sizes() == A.sizes()) ||
                    (M->dim() == 4 && M->size(0) == u.size(0) && u.size(1) % M->size(1) == 0 &&
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

// Dispatch on the state size: compile-time N = 16 (Mamba's d_state) for float, a runtime loop bound otherwise.
template <typename T, typename F>
void with_N(int64_t N, F&& f) {
  if (std::is_same_v<T, float> && N == 16) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

// Returns out (batch, dim, L), last state (batch, dim, N), checkpoints (batch, dim, nchunks, N).
std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                            bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1);
  auto out = at::empty_like(u);
  auto last = at::zeros({batch, dim, N}, u.options());
  auto ckpt = at::empty({batch, dim, (L + kChunk - 1) / kChunk, N}, u.options());
  if (L == 0) return {out, last, ckpt};
  with_dtype(u, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto p = make_problem<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    with_N<scalar_t>(N, [&](auto NT) {
      forward<scalar_t, decltype(NT)::value>(p, out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(),
                                              ckpt.data_ptr<scalar_t>());
    });
  });
  return {out, last, ckpt};
}

// Channels per backward work item: the largest divisor of the channels per group (of B and C) that still gives
// every thread about 4 items.
int64_t block_size(int64_t batch, int64_t dim, int64_t HB, int64_t HC) {
  const int64_t h = std::gcd(HB, HC), want = 4 * static_cast<int64_t>(at::get_num_threads());
  for (int64_t s = h; s >= 1; --s) {
    if (h % s == 0 && batch * (dim / s) >= want) return s;
  }
  return 1;
}

// Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias.
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
  const int64_t GB = B_var ? B.size(1) : 1, GC = C_var ? C.size(1) : 1;
  const int64_t S = block_size(batch, dim, dim / GB, dim / GC);
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA = at::zeros({batch, dim, N}, u.options());
  auto dD = at::zeros({batch, dim}, u.options()), dbias = at::zeros({batch, dim}, u.options());
  auto dB = B_var ? at::zeros({dim / GB / S, batch, GB, L, N}, u.options()) : at::zeros({batch, dim, N}, u.options());
  auto dC = C_var ? at::zeros({dim / GC / S, batch, GC, L, N}, u.options()) : at::zeros({batch, dim, N}, u.options());
  if (L > 0) {
    with_dtype(u, [&](auto tag) {
      using scalar_t = decltype(tag);
      const auto p = make_problem<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
      Grads<scalar_t> g;
      g.du = du.data_ptr<scalar_t>();
      g.ddelta = ddelta.data_ptr<scalar_t>();
      g.dz = z ? dz.data_ptr<scalar_t>() : nullptr;
      g.dA = dA.data_ptr<scalar_t>();
      g.dD = dD.data_ptr<scalar_t>();
      g.dbias = dbias.data_ptr<scalar_t>();
      g.dB = dB.data_ptr<scalar_t>();
      g.dC = dC.data_ptr<scalar_t>();
      g.S = S;
      g.dout = dout.data_ptr<scalar_t>();
      g.dlast = dlast ? dlast->data_ptr<scalar_t>() : nullptr;
      with_N<scalar_t>(N, [&](auto NT) { backward<scalar_t, decltype(NT)::value>(p, ckpt.data_ptr<scalar_t>(), g); });
    });
  } else {
    du.zero_();
    ddelta.zero_();
    if (z) dz.zero_();
  }
  // inputs that were not given get empty gradients
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), D ? dD.sum(0) : at::empty({0}, u.options()),
          z ? dz : at::empty({0}, u.options()), bias ? dbias.sum(0) : at::empty({0}, u.options())};
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
