#include "asl/version.h"

namespace asl {
const char* version() { return ASL_VERSION; }
}  // namespace asl
