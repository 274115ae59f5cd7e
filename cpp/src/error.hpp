// Errors inside the library: one exception type with the C API's code; the C API turns it into a RarResult.
#pragma once

#include <stdexcept>
#include <string>

#include "rar/rar.h"

namespace rar::detail {

class Failure : public std::runtime_error {
 public:
  Failure(RarErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  RarErrorCode code() const { return code_; }

 private:
  RarErrorCode code_;
};

[[noreturn]] inline void Fail(RarErrorCode code, const std::string& message) { throw Failure(code, message); }

}  // namespace rar::detail
