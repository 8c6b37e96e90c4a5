#include "asl/metrics/map.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

namespace asl::metrics {
namespace {

void check(const torch::Tensor& scores, const torch::Tensor& targets) {
  TORCH_CHECK(scores.dim() == 2, "metrics: scores must be N x C, got shape ", scores.sizes());
  TORCH_CHECK(scores.sizes() == targets.sizes(), "metrics: scores shape ", scores.sizes(), " differs from targets shape ",
              targets.sizes());
}

// One score of one class: its descending-order key and where it came from.
struct Entry {
  uint32_t key;  // order-preserving image of the float score, complemented: ascending key = descending score
  uint32_t tag;  // row << 1 | positive
};

uint32_t row_of(const Entry& e) { return e.tag >> 1; }
uint32_t positive_of(const Entry& e) { return e.tag & 1u; }

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

// Stable LSD radix sort of src into dst on the 32-bit keys (digits of 11, 11 and 10 bits, all three
// histograms from one read): ties keep their input order. tmp is scratch of the same size.
void radix_sort(const Entry* src, Entry* dst, Entry* tmp, int64_t n) {
  constexpr int kShift[3] = {0, 11, 22};
  constexpr uint32_t kMask = 0x7ffu;
  std::vector<uint32_t> count(3 * 2048, 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = src[i].key;
    ++count[k & kMask];
    ++count[2048 + ((k >> 11) & kMask)];
    ++count[4096 + (k >> 22)];
  }
  // Passes whose digit is the same for every key move nothing and are skipped; the data ping-pongs
  // between dst and tmp so that the last pass that runs writes dst.
  bool run[3];
  int passes = 0;
  for (int d = 0; d < 3; ++d) {
    run[d] = true;
    for (int b = 0; b < 2048; ++b) run[d] = run[d] && count[2048 * d + b] != static_cast<uint32_t>(n);
    passes += run[d];
  }
  if (passes == 0) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(Entry));
    return;
  }
  const Entry* from = src;
  Entry* to = passes % 2 == 1 ? dst : tmp;
  for (int d = 0; d < 3; ++d) {
    if (!run[d]) continue;
    uint32_t* c = count.data() + 2048 * d;
    uint32_t sum = 0;
    for (int b = 0; b < 2048; ++b) {
      const uint32_t v = c[b];
      c[b] = sum;
      sum += v;
    }
    const int shift = kShift[d];
    for (int64_t i = 0; i < n; ++i) to[c[(from[i].key >> shift) & kMask]++] = from[i];
    from = to;
    to = to == dst ? tmp : dst;
  }
}

// A score (as its ascending key) with the row it came from and, in the top bit, whether the row
// belongs to a run of equal scores that holds both a positive and a negative. Sorting these pairs
// with the comparisons and swaps of NumPy's argsort leaves the rows in exactly NumPy's order,
// without NumPy's indirect loads.
struct Ranked {
  uint32_t key;
  uint32_t row;  // row | kMixed
};
constexpr uint32_t kMixed = 0x80000000u;

bool lt(const Ranked& a, const Ranked& b) { return a.key < b.key; }
int64_t mixed(const Ranked& r) { return r.row >> 31; }

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

// The Hoare partition loop of NumPy's quicksort (t[hi - 1] holds the pivot, t[lo] <= pivot) without its
// unpredictable branches. On the values before any swap, let L be the positions in (lo, hi - 1] whose
// key is >= the pivot, in ascending order, and R the positions in [lo, hi - 1) whose key is <= the
// pivot, in descending order. The loop's k-th swap exchanges L[k] and R[k] for as long as
// L[k] < R[k] (a swap only changes positions the scans have already passed), and it stops with
// i = min(L[m], R[m - 1]) after m swaps. Returns that i, with the swaps done.
struct PartitionScratch {
  std::vector<int32_t> left, right;
};
constexpr int64_t kListPartitionMin = 64;  // below this the plain loop is as fast

int64_t partition_by_lists(Ranked* t, int64_t lo, int64_t hi, uint32_t pivot, PartitionScratch& scratch) {
  int32_t* L = scratch.left.data();
  int32_t* R = scratch.right.data();  // ascending here; R[k] of the comment is R[nr - 1 - k]
  int64_t nl = 0, nr = 1;
  R[0] = static_cast<int32_t>(lo);
  for (int64_t p = lo + 1; p <= hi - 2; ++p) {
    const uint32_t key = t[p].key;
    L[nl] = static_cast<int32_t>(p);
    nl += key >= pivot;
    R[nr] = static_cast<int32_t>(p);
    nr += key <= pivot;
  }
  L[nl++] = static_cast<int32_t>(hi - 1);
  // The number of swaps m: L[k] < R[nr - 1 - k] holds for k < m and fails from m on (L ascends, R
  // descends); it fails at k = min(nl, nr) - 1 at the latest, where L meets hi - 1 or R meets lo.
  int64_t a = 0, b = std::min(nl, nr) - 1;
  while (a < b) {
    const int64_t k = (a + b) / 2;
    if (L[k] < R[nr - 1 - k]) a = k + 1;
    else b = k;
  }
  const int64_t m = a;
  for (int64_t k = 0; k < m; ++k) std::swap(t[L[k]], t[R[nr - 1 - k]]);
  return m == 0 ? L[0] : std::min<int64_t>(L[m], R[nr - m]);
}

// NumPy 1.24's default argsort is an introsort: median-of-3 quicksort that pushes the larger side
// and goes on with the smaller, insertion sort for 16 elements or fewer, and heapsort for a range
// taken from its stack past 2 log2(n) levels. This runs the same comparisons and swaps, so equal
// keys end in NumPy's order, but only where that order matters: a range holding fewer than two rows
// marked kMixed is left unsorted. Its rows still end up inside the range, so every marked row's
// rank among the rows of its own tie is final.
void numpy_order_sort_marked(Ranked* t, int64_t num, int64_t marked, PartitionScratch& scratch) {
  if (num < 2 || marked < 2) return;
  scratch.left.resize(static_cast<size_t>(num));
  scratch.right.resize(static_cast<size_t>(num));
  struct Range {
    int64_t lo, hi, marked;
    int depth;
    bool from_stack;  // NumPy checks the depth only of ranges it pops (and of the whole array)
  };
  std::vector<Range> stack;
  stack.push_back({0, num - 1, marked, 2 * (63 - __builtin_clzll(static_cast<unsigned long long>(num))), true});
  while (!stack.empty()) {
    Range r = stack.back();
    stack.pop_back();
    for (;;) {
      if (r.from_stack && r.depth < 0) {
        numpy_heapsort(t + r.lo, r.hi - r.lo + 1);
        break;
      }
      if (r.hi - r.lo <= 15) {
        for (int64_t i = r.lo + 1; i <= r.hi; ++i) {
          const Ranked item = t[i];
          int64_t j = i;
          while (j > r.lo && lt(item, t[j - 1])) {
            t[j] = t[j - 1];
            --j;
          }
          t[j] = item;
        }
        break;
      }
      const int64_t lo = r.lo, hi = r.hi;
      const int64_t mid = lo + ((hi - lo) >> 1);
      if (lt(t[mid], t[lo])) std::swap(t[mid], t[lo]);
      if (lt(t[hi], t[mid])) std::swap(t[hi], t[mid]);
      if (lt(t[mid], t[lo])) std::swap(t[mid], t[lo]);
      const Ranked pivot = t[mid];
      std::swap(t[mid], t[hi - 1]);
      int64_t i = 0, left_marked = 0;
      if (hi - lo >= kListPartitionMin) {
        i = partition_by_lists(t, lo, hi, pivot.key, scratch);
        for (int64_t p = lo; p < i; ++p) left_marked += mixed(t[p]);
      } else {
        int64_t j = hi - 1;
        i = lo;
        left_marked = mixed(t[lo]);  // t[lo] stays on the left; so does every row i passes
        for (;;) {
          while (lt(t[++i], pivot)) left_marked += mixed(t[i]);
          while (lt(pivot, t[--j])) {
          }
          if (i >= j) break;
          std::swap(t[i], t[j]);
          left_marked += mixed(t[i]);
        }
      }
      std::swap(t[i], t[hi - 1]);
      const bool push_right = i - lo < hi - i;
      const Range left{lo, i - 1, left_marked, r.depth - 1, !push_right};
      const Range right{i + 1, hi, r.marked - left_marked - mixed(t[i]), r.depth - 1, push_right};
      const bool need_left = left.marked >= 2, need_right = right.marked >= 2;
      if (need_left && need_right) {
        stack.push_back(push_right ? right : left);
        r = push_right ? left : right;
      } else if (need_left || need_right) {
        r = need_left ? left : right;
      } else {
        break;
      }
    }
  }
}

double ap_reference(const Entry* sorted, int64_t n) {
  double precision_sum = 0;
  int64_t positives = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (positive_of(sorted[i])) {
      ++positives;
      precision_sum += static_cast<double>(positives) / static_cast<double>(i + 1);
    }
  }
  return precision_sum / (static_cast<double>(positives) + 1e-8);
}

double ap_tie_aware(const Entry* sorted, int64_t n) {
  int64_t total_pos = 0;
  for (int64_t i = 0; i < n; ++i) total_pos += positive_of(sorted[i]);
  if (total_pos == 0) return 0.0;
  double ap = 0, prev_recall = 0;
  int64_t tp = 0, seen = 0;
  for (int64_t i = 0; i < n; ++i) {
    tp += positive_of(sorted[i]);
    ++seen;
    // One precision-recall point per distinct score: at the last entry of each run of equal keys.
    if (i + 1 == n || sorted[i + 1].key != sorted[i].key) {
      const double recall = static_cast<double>(tp) / static_cast<double>(total_pos);
      ap += (recall - prev_recall) * (static_cast<double>(tp) / static_cast<double>(seen));
      prev_recall = recall;
    }
  }
  return ap;
}

// Per-thread scratch for one class at a time.
struct ClassWork {
  std::vector<Entry> sorted, tmp;
  std::vector<Ranked> ranked;
  PartitionScratch scratch;
  std::vector<int32_t> group_of_row;  // 1 + index of the mixed run a row belongs to, else 0
  struct Run {
    int64_t start, length, cursor;
  };
  std::vector<Run> runs;

  explicit ClassWork(int64_t n)
      : sorted(static_cast<size_t>(n)), tmp(static_cast<size_t>(n)), group_of_row(static_cast<size_t>(n), 0) {}

  // The reference AP of one class whose entries (in row order) are `rows`.
  double reference_ap(const Entry* rows, int64_t n) {
    radix_sort(rows, sorted.data(), tmp.data(), n);
    // Runs of equal scores with both a positive and a negative: only there does the order inside a
    // tie change the reference AP (a run of one kind contributes the same in any order).
    runs.clear();
    int64_t marked = 0;
    for (int64_t a = 0; a < n;) {
      int64_t b = a + 1;
      uint32_t kinds = 1u << positive_of(sorted[a]);
      while (b < n && sorted[b].key == sorted[a].key) kinds |= 1u << positive_of(sorted[b++]);
      if (kinds == 3u) {
        runs.push_back({a, b - a, b - 1});
        for (int64_t i = a; i < b; ++i) group_of_row[row_of(sorted[i])] = static_cast<int32_t>(runs.size());
        marked += b - a;
      }
      a = b;
    }
    if (runs.empty()) return ap_reference(sorted.data(), n);
    ranked.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      ranked[static_cast<size_t>(i)] = {~rows[i].key, static_cast<uint32_t>(i) | (group_of_row[i] != 0 ? kMixed : 0u)};
    }
    numpy_order_sort_marked(ranked.data(), n, marked, scratch);
    // NumPy's ascending order, reversed: the first marked row met (in ascending order) is the last of its
    // run in the reference's descending ranking.
    for (int64_t i = 0; i < n; ++i) {
      const Ranked& r = ranked[static_cast<size_t>(i)];
      if ((r.row & kMixed) == 0) continue;
      const uint32_t row = r.row & ~kMixed;
      Run& run = runs[static_cast<size_t>(group_of_row[row] - 1)];
      sorted[static_cast<size_t>(run.cursor--)] = rows[row];
      group_of_row[row] = 0;
    }
    return ap_reference(sorted.data(), n);
  }

  double tie_aware_ap(const Entry* rows, int64_t n) {
    radix_sort(rows, sorted.data(), tmp.data(), n);
    return ap_tie_aware(sorted.data(), n);
  }
};

}  // namespace

torch::Tensor average_precision(const torch::Tensor& scores_in, const torch::Tensor& targets_in,
                                ApDefinition definition) {
  check(scores_in, targets_in);
  const torch::Tensor scores = scores_in.to(torch::kCPU, torch::kFloat32).contiguous();
  const torch::Tensor positive = targets_in.to(torch::kCPU).eq(1).to(torch::kUInt8).contiguous();
  const int64_t n = scores.size(0), c = scores.size(1);
  torch::Tensor ap = torch::zeros({c}, torch::kFloat64);
  TORCH_CHECK(n < (int64_t{1} << 31), "metrics: at most 2^31 - 1 rows, got ", n);
  const float* s = scores.data_ptr<float>();
  const uint8_t* t = positive.data_ptr<uint8_t>();
  double* out = ap.data_ptr<double>();
  if (n == 0) return ap;
  // Every class as its own array (row-major reads, in parallel over rows), then the classes in
  // parallel, taken one at a time so that classes with many ties do not leave a thread idle.
  const std::unique_ptr<Entry[]> columns(new Entry[static_cast<size_t>(n * c)]);  // filled below, not zeroed
  at::parallel_for(0, n, 2048, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* srow = s + i * c;
      const uint8_t* trow = t + i * c;
      for (int64_t k = 0; k < c; ++k) {
        columns[static_cast<size_t>(k * n + i)] = {descending_key(srow[k]), static_cast<uint32_t>(i) << 1 | trow[k]};
      }
    }
  });
  std::atomic<int64_t> next_class{0};
  at::parallel_for(0, std::min<int64_t>(c, at::get_num_threads()), 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      ClassWork work(n);
      for (int64_t k = next_class++; k < c; k = next_class++) {
        const Entry* rows = columns.get() + k * n;
        out[k] = definition == ApDefinition::TieAware ? work.tie_aware_ap(rows, n) : work.reference_ap(rows, n);
      }
    }
  });
  return ap;
}

double mean_average_precision(const torch::Tensor& scores, const torch::Tensor& targets, ApDefinition definition) {
  check(scores, targets);
  if (scores.numel() == 0) return 0.0;
  return 100.0 * average_precision(scores, targets, definition).mean().item<double>();
}

namespace {

ThresholdMetrics counted_metrics(const torch::Tensor& predicted, const torch::Tensor& targets_in) {
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

}  // namespace

ThresholdMetrics threshold_metrics(const torch::Tensor& scores_in, const torch::Tensor& targets_in, double threshold) {
  check(scores_in, targets_in);
  // Compared in float32, as the reference compares its float32 scores with the threshold.
  return counted_metrics(scores_in.to(torch::kCPU, torch::kFloat32).gt(threshold), targets_in);
}

ThresholdMetrics threshold_metrics(const torch::Tensor& scores_in, const torch::Tensor& targets_in,
                                   const torch::Tensor& thresholds) {
  check(scores_in, targets_in);
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) == scores_in.size(1), "threshold_metrics: expected ",
              scores_in.size(1), " thresholds, got shape ", thresholds.sizes());
  const torch::Tensor t = thresholds.to(torch::kCPU, torch::kFloat64).view({1, -1});
  return counted_metrics(scores_in.to(torch::kCPU, torch::kFloat32).to(torch::kFloat64).gt(t), targets_in);
}

}  // namespace asl::metrics
