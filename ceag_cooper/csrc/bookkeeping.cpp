// Fused CPU kernels for the per-step bookkeeping of ceag_cooper (see ceag_cooper/native.py).
//
// On a CPU every PyTorch operator call costs a few microseconds whatever its size, and the
// vectorized bookkeeping is ~20 of them. These three functions do the same work in one call
// each, with a plain loop over the N samples of a batch (and over the G groups to read means).
// They are optional: the pure-PyTorch path is the reference and the only one on accelerators.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// The ids as a contiguous int64 CPU vector (a no-op when they already are), after checking them.
torch::Tensor checked_ids(const torch::Tensor& ids, const char* name) {
  TORCH_CHECK(ids.device().is_cpu(), name, " must be on the CPU for the native backend");
  TORCH_CHECK(ids.dim() == 1, name, " must be 1-D, got ", ids.dim(), " dimensions");
  TORCH_CHECK(ids.scalar_type() == torch::kLong, name, " must be int64");
  return ids.contiguous();
}

}  // namespace

// Appends values[i] to the ring of group ids[i], in order (deque(maxlen=k) semantics), and keeps
// the per-group sums of the held values up to date in float64: exact for 0/1 accuracies. A sum is
// recomputed from its ring whenever the buffer wraps around (so rounding never accumulates past one
// window), when an update cancels most of it (a large value leaving), and whenever a non-finite
// value is evicted or held (so a NaN stops counting exactly when the deque would drop it).
// ring: (G, k + 1), only the first k columns are used; written: (G,) int64; sums: (G,) float64.
// Every id is checked before anything is written: a call with a bad id changes nothing.
void buffer_update(torch::Tensor ring, torch::Tensor written, torch::Tensor sums, torch::Tensor group_ids,
                   torch::Tensor values) {
  const torch::Tensor ids = checked_ids(group_ids, "group ids");
  TORCH_CHECK(ring.device().is_cpu() && ring.is_contiguous() && ring.dim() == 2, "ring must be a contiguous CPU matrix");
  TORCH_CHECK(values.device().is_cpu(), "values must be on the CPU for the native backend");
  TORCH_CHECK(ring.scalar_type() == torch::kFloat || ring.scalar_type() == torch::kDouble,
              "backend='native' stores float32 or float64 values, got ", ring.scalar_type(), "; use backend='torch'");
  const int64_t groups = ring.size(0);
  TORCH_CHECK(written.scalar_type() == torch::kLong && written.is_contiguous() && written.numel() == groups,
              "written must be a contiguous int64 vector with one count per group");
  TORCH_CHECK(sums.scalar_type() == torch::kDouble && sums.is_contiguous() && sums.numel() == groups,
              "sums must be a contiguous float64 vector with one sum per group");
  TORCH_CHECK(values.dim() == 1 && values.size(0) == ids.size(0), "values must have one entry per id");
  const int64_t stride = ring.size(1);
  const int64_t capacity = stride - 1;
  TORCH_CHECK(capacity >= 1, "ring needs at least one column plus the spare one");
  const int64_t n = ids.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* count = written.data_ptr<int64_t>();
  double* sum = sums.data_ptr<double>();
  if (n > 0) {  // a branch-free min/max pass: bad ids fail before anything is written
    int64_t lowest = id[0], highest = id[0];
    for (int64_t i = 1; i < n; ++i) {
      lowest = std::min(lowest, id[i]);
      highest = std::max(highest, id[i]);
    }
    TORCH_CHECK(lowest >= 0 && highest < groups, "group id ", lowest < 0 ? lowest : highest, " out of range [0, ",
                groups, ")");
  }
  AT_DISPATCH_FLOATING_TYPES(ring.scalar_type(), "buffer_update", [&] {
    const torch::Tensor vals = values.to(ring.scalar_type()).contiguous();
    const scalar_t* v = vals.data_ptr<scalar_t>();
    scalar_t* r = ring.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = id[i];
      TORCH_CHECK(count[g] >= 0, "corrupt replay buffer state: group ", g, " has a negative count ", count[g]);
      scalar_t* row = r + g * stride;
      const int64_t position = count[g] % capacity;
      scalar_t& slot = row[position];
      const double evicted = static_cast<double>(slot);
      slot = v[i];
      ++count[g];
      const double before = sum[g];
      const double after = before + (static_cast<double>(v[i]) - evicted);
      // Cancellation: when the sum falls far below the terms it came from, its absolute rounding
      // error (relative to those terms) is no longer small relative to it.
      const double scale = std::max({std::fabs(before), std::fabs(evicted), std::fabs(static_cast<double>(v[i]))});
      const bool cancelled = std::fabs(after) < 0x1p-20 * scale;
      if (position == capacity - 1 || cancelled || !std::isfinite(evicted) || !std::isfinite(after)) {
        double exact = 0.0;  // unfilled slots hold 0, so the whole row can be summed
        for (int64_t j = 0; j < capacity; ++j) exact += static_cast<double>(row[j]);
        sum[g] = exact;
      } else {
        sum[g] = after;
      }
    }
  });
}

// Per-group means of the held values (0 for an empty group) and whether each buffer is full.
// The means have the ring's dtype.
std::tuple<torch::Tensor, torch::Tensor> buffer_query(torch::Tensor ring, torch::Tensor sums, torch::Tensor written) {
  const int64_t capacity = ring.size(1) - 1;
  const torch::ScalarType dtype = ring.scalar_type();
  TORCH_CHECK(sums.scalar_type() == torch::kDouble && sums.is_contiguous(), "sums must be contiguous float64");
  TORCH_CHECK(written.scalar_type() == torch::kLong && written.is_contiguous(), "written must be contiguous int64");
  const int64_t groups = sums.size(0);
  torch::Tensor means = torch::empty({groups}, sums.options().dtype(dtype));
  torch::Tensor full = torch::empty({groups}, sums.options().dtype(torch::kBool));
  const double* sum = sums.data_ptr<double>();
  const int64_t* count = written.data_ptr<int64_t>();
  bool* f = full.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "buffer_query", [&] {
    scalar_t* m = means.data_ptr<scalar_t>();
    // Full buffers (most of them, after warm-up) multiply by 1/k instead of dividing. For the
    // integer sums of 0/1 accuracies this rounds to exactly the same float32 as sum / k.
    const double inverse_capacity = 1.0 / static_cast<double>(capacity);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c = count[g];
      const double mean = c >= capacity ? sum[g] * inverse_capacity : (c > 0 ? sum[g] / static_cast<double>(c) : 0.0);
      m[g] = static_cast<scalar_t>(mean);
      f[g] = c >= capacity;
    }
  });
  return {means, full};
}

// Per-group means of a differentiable per-sample loss and of a 0/1 accuracy (0 where a group has no
// sample), and the per-group counts, all in the loss's dtype: the batch statistics of one step in a
// single call. Only the loss means carry a gradient: d mean_g / d loss_i = 1 / count_g for the
// samples i of group g.
class GroupStatistics : public torch::autograd::Function<GroupStatistics> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::Tensor loss,
                                                torch::Tensor correct, torch::Tensor group_ids, int64_t groups) {
    const torch::Tensor ids = checked_ids(group_ids, "group ids");
    TORCH_CHECK(loss.dim() == 1 && loss.size(0) == ids.size(0), "loss must have one entry per id");
    TORCH_CHECK(correct.dim() == 1 && correct.size(0) == ids.size(0), "correct must have one entry per id");
    TORCH_CHECK(loss.device().is_cpu() && correct.device().is_cpu(), "loss and correct must be CPU tensors");
    TORCH_CHECK(loss.scalar_type() == torch::kFloat || loss.scalar_type() == torch::kDouble,
                "backend='native' computes float32 or float64 losses, got ", loss.scalar_type(),
                "; use backend='torch'");
    // Accumulate straight into the outputs, in sample order (as index_add does), and divide only
    // the groups present in the batch: the cost is O(N) plus zero-filling the (G,) outputs.
    const torch::Tensor values = loss.contiguous();
    const torch::Tensor hits = correct.to(loss.scalar_type()).contiguous();
    // empty + memset rather than zeros: one dispatcher call per output instead of two.
    torch::Tensor loss_means = torch::empty({groups}, loss.options());
    torch::Tensor acc_means = torch::empty({groups}, loss.options());
    torch::Tensor counts = torch::empty({groups}, loss.options());
    for (torch::Tensor* out : {&loss_means, &acc_means, &counts}) {
      std::memset(out->data_ptr(), 0, static_cast<size_t>(groups) * out->element_size());
    }
    const int64_t n = ids.size(0);
    const int64_t* id = ids.data_ptr<int64_t>();
    thread_local std::vector<int64_t> present;  // reused between calls: no allocation per step
    present.clear();
    present.reserve(static_cast<size_t>(n));
    AT_DISPATCH_FLOATING_TYPES(loss.scalar_type(), "group_statistics", [&] {
      const scalar_t* v = values.data_ptr<scalar_t>();
      const scalar_t* h = hits.data_ptr<scalar_t>();
      scalar_t* lm = loss_means.data_ptr<scalar_t>();
      scalar_t* am = acc_means.data_ptr<scalar_t>();
      scalar_t* c = counts.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t g = id[i];
        TORCH_CHECK(g >= 0 && g < groups, "group id ", g, " out of range [0, ", groups, ")");
        if (c[g] == 0) present.push_back(g);
        c[g] += 1;
        lm[g] += v[i];
        am[g] += h[i];
      }
      for (const int64_t g : present) {
        lm[g] /= c[g];
        am[g] /= c[g];
      }
    });
    // Only the ids are saved (version-checked: ids changed in place before backward raise); the
    // counts are recounted in backward, so the caller may modify the returned counts freely.
    ctx->save_for_backward({ids});
    ctx->saved_data["groups"] = groups;
    ctx->mark_non_differentiable({acc_means, counts});
    return {loss_means, acc_means, counts};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor ids = ctx->get_saved_variables()[0];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    // grad_loss[i] = grad[ids[i]] / counts[ids[i]]. Absent groups divide by 1, not 0, so that a
    // second-order pass through grad (create_graph=True) never meets 0 / 0.
    const torch::Tensor counts = at::bincount(ids, {}, groups).to(grads[0].scalar_type()).clamp_min_(1);
    torch::Tensor grad_loss = (grads[0] / counts).index_select(0, ids);
    return {grad_loss, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> group_statistics(torch::Tensor loss, torch::Tensor correct,
                                                                         torch::Tensor ids, int64_t groups) {
  const auto out = GroupStatistics::apply(loss, correct, ids, groups);
  return {out[0], out[1], out[2]};  // a Python tuple, not a list
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("buffer_update", &buffer_update, "Append values to per-group ring buffers (in place)");
  m.def("buffer_query", &buffer_query, "Per-group buffer means and full flags");
  m.def("group_statistics", &group_statistics, "Per-group loss means (differentiable), accuracy means, counts");
}
