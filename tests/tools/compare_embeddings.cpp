// Checks lathe-encode's output (stdin: one line of floats per sentence) against the `embeddings`
// tensor of a golden safetensors file, to a max-abs tolerance. Exit 0 = match, 1 = mismatch,
// 2 = bad input. Used by the `tools: lathe-encode ...` test.
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

#include "lathe/lathe.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: lathe-compare-embeddings GOLDEN.safetensors TOLERANCE < embeddings\n";
    return 2;
  }
  try {
    const lathe::Tensor golden = lathe::io::SafetensorsFile::open(argv[1]).tensor("embeddings");
    const double tol = std::strtod(argv[2], nullptr);
    const auto expected = golden.to_vector<double>();
    const int64_t rows = golden.size(0), dim = golden.size(1);
    std::string line;
    int64_t row = 0;
    double worst = 0;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      double v = 0;
      int64_t col = 0;
      while (in >> v) {
        if (row >= rows || col >= dim) {
          std::cerr << "line " << row + 1 << ": more values than the golden [" << rows << ", "
                    << dim << "]\n";
          return 1;
        }
        worst = std::max(worst, std::abs(v - expected[size_t(row * dim + col)]));
        ++col;
      }
      if (col != dim) {
        std::cerr << "line " << row + 1 << ": " << col << " values, expected " << dim << "\n";
        return 1;
      }
      ++row;
    }
    if (row != rows) {
      std::cerr << row << " lines, expected " << rows << "\n";
      return 1;
    }
    std::cout << "max abs difference " << worst << " (tolerance " << tol << ")\n";
    return worst <= tol ? 0 : 1;
  } catch (const lathe::Error& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}
