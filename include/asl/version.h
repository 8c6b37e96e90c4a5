// The library's version string.
#pragma once

namespace asl {
/// Semantic version of asl, e.g. "0.1.0".
const char* version();
}  // namespace asl
