// Writes docs/ops.md from the op table, or with --check compares the committed file against it.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "lathe/lathe.h"

int main(int argc, char** argv) {
  const std::string generated = lathe::ops_markdown();
  if (argc == 3 && std::string(argv[1]) == "--check") {
    std::ifstream in(argv[2]);
    if (!in) {
      std::cerr << "lathe-ops-doc: cannot read " << argv[2] << "\n";
      return 2;
    }
    std::stringstream committed;
    committed << in.rdbuf();
    if (committed.str() != generated) {
      std::cerr << "lathe-ops-doc: " << argv[2]
                << " is out of date with core/op_table.def; run scripts/gen-ops-doc.sh\n";
      return 1;
    }
    std::cout << argv[2] << " matches the op table\n";
    return 0;
  }
  if (argc == 2 && std::string(argv[1]) != "--help") {
    std::ofstream out(argv[1]);
    out << generated;
    return out ? 0 : 2;
  }
  if (argc == 1) {
    std::cout << generated;
    return 0;
  }
  std::cerr << "usage: lathe-ops-doc [OUT.md | --check FILE.md]\n";
  return 2;
}
