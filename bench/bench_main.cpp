// Shared main of the Google Benchmark programs: 2 compute threads, as the Python baselines use.
#include <benchmark/benchmark.h>

#include <ATen/Parallel.h>

#include "asl/runtime.h"

int main(int argc, char** argv) {
  asl::set_compute_threads(2);  // as the asl command sets its threads
  benchmark::AddCustomContext("asl_cpu", asl::describe(asl::cpu_info()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
