// lathe::Error is the one exception type every invalid call raises. Messages name the op and the
// shapes / dtypes / devices involved, because "shape mismatch" alone is useless in a 200-line
// model. LATHE_CHECK builds the message lazily so the happy path pays only for the comparison.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lathe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}
}  // namespace detail

}  // namespace lathe

// LATHE_CHECK(cond, "op: ", "message parts ", value, ...) throws lathe::Error when cond is false.
#define LATHE_CHECK(cond, ...)                                    \
  do {                                                            \
    if (!(cond)) [[unlikely]] {                                   \
      throw ::lathe::Error(::lathe::detail::concat(__VA_ARGS__)); \
    }                                                             \
  } while (0)

#define LATHE_FAIL(...) throw ::lathe::Error(::lathe::detail::concat(__VA_ARGS__))
