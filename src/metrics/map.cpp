#include "asl/metrics/map.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <vector>

namespace asl::metrics {
namespace {

void check(const torch::Tensor& scores, const torch::Tensor& targets) {
  TORCH_CHECK(scores.dim() == 2, "metrics: scores must be N x C, got shape ", scores.sizes());
  TORCH_CHECK(scores.sizes() == targets.sizes(), "metrics: scores shape ", scores.sizes(), " differs from targets shape ",
              targets.sizes());
}

struct Entry {
  uint32_t key;  // order-preserving image of the float score, complemented: ascending key = descending score
  uint32_t positive;
};

// Ascending key with the order of NumPy's float comparison: -0 equals +0, every NaN sorts last.
uint32_t ascending_key(float v) {
  if (v != v) return 0xffffffffu;
  if (v == 0.0f) v = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Ascending key order = descending score order.
uint32_t descending_key(float v) { return ~ascending_key(v); }

// Stable LSD radix sort on the 32-bit keys (4 passes of 8 bits): ties keep their input order.
void radix_sort(std::vector<Entry>& a, std::vector<Entry>& tmp) {
  tmp.resize(a.size());
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (const Entry& e : a) ++count[((e.key >> shift) & 0xffu) + 1];
    bool one_bucket = false;  // every key has the same byte here: the pass would not move anything
    for (int b = 1; b <= 256; ++b) one_bucket = one_bucket || count[b] == a.size();
    if (one_bucket) continue;
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (const Entry& e : a) tmp[count[(e.key >> shift) & 0xffu]++] = e;
    a.swap(tmp);
  }
}

// True when some run of equal scores holds both a positive and a negative: only then does the order
// inside a tie change the reference AP.
bool has_mixed_ties(const std::vector<Entry>& sorted) {
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].key == sorted[i - 1].key && sorted[i].positive != sorted[i - 1].positive) return true;
  }
  return false;
}


// A score (as its ascending key) with the row it came from. Sorting these pairs with the comparisons
// and swaps of NumPy's argsort leaves the rows in exactly NumPy's order, without indirect loads.
struct Ranked {
  uint32_t key;
  int32_t row;
};

bool lt(const Ranked& a, const Ranked& b) { return a.key < b.key; }

void numpy_heapsort(Ranked* a, int64_t n) {
  Ranked* h = a - 1;  // 1-based
  auto sift = [&](int64_t i, int64_t size, Ranked item) {
    for (int64_t j = i << 1; j <= size;) {
      if (j < size && lt(h[j], h[j + 1])) ++j;
      if (!lt(item, h[j])) break;
      h[i] = h[j];
      i = j;
      j += j;
    }
    h[i] = item;
  };
  for (int64_t l = n >> 1; l > 0; --l) sift(l, n, h[l]);
  for (; n > 1;) {
    const Ranked item = h[n];
    h[n] = h[1];
    n -= 1;
    sift(1, n, item);
  }
}

// Ascending sort in exactly the order NumPy 1.24's default argsort (introsort: median-of-3
// quicksort, insertion sort for 16 elements or fewer, heapsort past 2 log2(n) levels) leaves equal
// values. The reference ranks with argsort()[::-1]; this reproduces its tie order.
void numpy_order_sort(std::vector<Ranked>& items) {
  const int64_t num = static_cast<int64_t>(items.size());
  if (num < 2) return;
  struct Range {
    int64_t lo, hi;
    int depth;
  };
  std::vector<Range> stack;
  Ranked* t = items.data();
  int64_t lo = 0, hi = num - 1;
  int depth = 2 * (63 - __builtin_clzll(static_cast<unsigned long long>(num)));
  for (;;) {
    if (depth < 0) {
      numpy_heapsort(t + lo, hi - lo + 1);
    } else {
      while (hi - lo > 15) {
        const int64_t mid = lo + ((hi - lo) >> 1);
        if (lt(t[mid], t[lo])) std::swap(t[mid], t[lo]);
        if (lt(t[hi], t[mid])) std::swap(t[hi], t[mid]);
        if (lt(t[mid], t[lo])) std::swap(t[mid], t[lo]);
        const Ranked pivot = t[mid];
        int64_t i = lo, j = hi - 1;
        std::swap(t[mid], t[j]);
        for (;;) {
          do ++i; while (lt(t[i], pivot));
          do --j; while (lt(pivot, t[j]));
          if (i >= j) break;
          std::swap(t[i], t[j]);
        }
        std::swap(t[i], t[hi - 1]);
        --depth;
        if (i - lo < hi - i) {  // continue with the smaller side, keep the larger for later
          stack.push_back({i + 1, hi, depth});
          hi = i - 1;
        } else {
          stack.push_back({lo, i - 1, depth});
          lo = i + 1;
        }
      }
      for (int64_t i = lo + 1; i <= hi; ++i) {
        const Ranked item = t[i];
        int64_t j = i;
        while (j > lo && lt(item, t[j - 1])) {
          t[j] = t[j - 1];
          --j;
        }
        t[j] = item;
      }
    }
    if (stack.empty()) break;
    lo = stack.back().lo;
    hi = stack.back().hi;
    depth = stack.back().depth;
    stack.pop_back();
  }
}

double ap_reference(const std::vector<Entry>& sorted) {
  double precision_sum = 0;
  int64_t positives = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i].positive) {
      ++positives;
      precision_sum += static_cast<double>(positives) / static_cast<double>(i + 1);
    }
  }
  return precision_sum / (static_cast<double>(positives) + 1e-8);
}

double ap_tie_aware(const std::vector<Entry>& sorted) {
  int64_t total_pos = 0;
  for (const Entry& e : sorted) total_pos += e.positive;
  if (total_pos == 0) return 0.0;
  double ap = 0, prev_recall = 0;
  int64_t tp = 0, seen = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    tp += sorted[i].positive;
    ++seen;
    // One precision-recall point per distinct score: at the last entry of each run of equal keys.
    if (i + 1 == sorted.size() || sorted[i + 1].key != sorted[i].key) {
      const double recall = static_cast<double>(tp) / static_cast<double>(total_pos);
      ap += (recall - prev_recall) * (static_cast<double>(tp) / static_cast<double>(seen));
      prev_recall = recall;
    }
  }
  return ap;
}

}  // namespace

torch::Tensor average_precision(const torch::Tensor& scores_in, const torch::Tensor& targets_in,
                                ApDefinition definition) {
  check(scores_in, targets_in);
  const torch::Tensor scores = scores_in.to(torch::kCPU, torch::kFloat32).contiguous();
  const torch::Tensor positive = targets_in.to(torch::kCPU).eq(1).to(torch::kUInt8).contiguous();
  const int64_t n = scores.size(0), c = scores.size(1);
  torch::Tensor ap = torch::zeros({c}, torch::kFloat64);
  const float* s = scores.data_ptr<float>();
  const uint8_t* t = positive.data_ptr<uint8_t>();
  double* out = ap.data_ptr<double>();
  at::parallel_for(0, c, 1, [&](int64_t c0, int64_t c1) {
    std::vector<Entry> entries(static_cast<size_t>(n)), tmp;
    std::vector<Ranked> ranked;
    for (int64_t k = c0; k < c1; ++k) {
      for (int64_t i = 0; i < n; ++i) entries[static_cast<size_t>(i)] = {descending_key(s[i * c + k]), t[i * c + k]};
      radix_sort(entries, tmp);
      if (definition == ApDefinition::TieAware) {
        out[k] = ap_tie_aware(entries);
        continue;
      }
      if (has_mixed_ties(entries)) {
        // Rank exactly as the reference does (NumPy's argsort, reversed).
        ranked.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          ranked[static_cast<size_t>(i)] = {ascending_key(s[i * c + k]), static_cast<int32_t>(i)};
        }
        numpy_order_sort(ranked);
        for (int64_t i = 0; i < n; ++i) {
          const Ranked& r = ranked[static_cast<size_t>(n - 1 - i)];
          entries[static_cast<size_t>(i)] = {~r.key, t[r.row * c + k]};
        }
      }
      out[k] = ap_reference(entries);
    }
  });
  return ap;
}

double mean_average_precision(const torch::Tensor& scores, const torch::Tensor& targets, ApDefinition definition) {
  check(scores, targets);
  if (scores.numel() == 0) return 0.0;
  return 100.0 * average_precision(scores, targets, definition).mean().item<double>();
}

ThresholdMetrics threshold_metrics(const torch::Tensor& scores_in, const torch::Tensor& targets_in, double threshold) {
  check(scores_in, targets_in);
  // Compared in float32, as the reference compares its float32 scores with the threshold.
  const torch::Tensor predicted = scores_in.to(torch::kCPU, torch::kFloat32).gt(threshold);
  const torch::Tensor actual = targets_in.to(torch::kCPU).eq(1);
  const torch::Tensor tp = predicted.logical_and(actual).sum(0).to(torch::kFloat64);
  const torch::Tensor fp = predicted.logical_and(actual.logical_not()).sum(0).to(torch::kFloat64);
  const torch::Tensor fn = predicted.logical_not().logical_and(actual).sum(0).to(torch::kFloat64);
  const torch::Tensor has_tp = tp.gt(0);
  const torch::Tensor zero = torch::zeros_like(tp);
  // A class with no true positive scores 0 in precision, recall and F1 (its ratios may be 0/0).
  const torch::Tensor cp = torch::where(has_tp, tp / (tp + fp), zero);
  const torch::Tensor cr = torch::where(has_tp, tp / (tp + fn), zero);
  const torch::Tensor cf1 = torch::where(has_tp, 2 * cp * cr / (cp + cr), zero);
  ThresholdMetrics m;
  if (tp.numel() == 0) return m;
  m.CP = 100.0 * cp.mean().item<double>();
  m.CR = 100.0 * cr.mean().item<double>();
  m.CF1 = 100.0 * cf1.mean().item<double>();
  const double stp = tp.sum().item<double>(), sfp = fp.sum().item<double>(), sfn = fn.sum().item<double>();
  m.OP = stp > 0 ? 100.0 * stp / (stp + sfp) : 0.0;
  m.OR = stp > 0 ? 100.0 * stp / (stp + sfn) : 0.0;
  m.OF1 = stp > 0 ? 2 * m.OP * m.OR / (m.OP + m.OR) : 0.0;
  return m;
}

}  // namespace asl::metrics
