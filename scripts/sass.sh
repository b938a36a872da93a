#!/usr/bin/env bash
# What nvcc makes of a kernel file, without a GPU: registers, spills, shared memory and the SASS
# instruction mix of every kernel in one kernels/cuda/*.cu file, for one architecture.
#
#   scripts/sass.sh kernels/cuda/layer_norm.cu                 # every kernel of the file
#   scripts/sass.sh kernels/cuda/attention.cu 'dkdv.*64, 0, 1' # kernels whose name matches
#   scripts/sass.sh --dump kernels/cuda/softmax.cu 'forward'   # and their SASS, demangled
#   scripts/sass.sh build-nvcc/CMakeFiles/lathe.dir/kernels/cuda/softmax.cu.o  # an nvcc build's
#                                                              # object, not compiled again
#
# Each kernel's loops (backward branches) are listed with their instruction counts: for a kernel
# that loops over rows or tiles, the outermost loop's count is the work per iteration, which the
# totals (everything once, hoisted setup included) do not show.
#
# Why: GPU time is lent to few sessions, and a kernel that is issue-bound (too many instructions
# per element) or latency-bound (registers limiting occupancy) shows it in its SASS already.
# Counting instructions here, before and after a change, says whether the change did what it was
# meant to; only the GPU (scripts/gpu-check.sh) says how fast it runs.
#
# cuobjdump is not part of the installed toolkit: it comes from PyPI's nvidia-cuda-cuobjdump wheel,
# pinned by version and sha256 and unpacked into $LATHE_TOOLS_DIR (default ~/.cache/lathe/tools).
# Environment: LATHE_SASS_ARCH (default sm_90a, what the lent H100/H200 run), NVCC.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cuobjdump calls nvdisasm for -sass; both come from PyPI, same release.
TOOLS_VERSION=13.5.37
CUOBJDUMP_SHA256=38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58
NVDISASM_SHA256=d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca
TOOLS_DIR="${LATHE_TOOLS_DIR:-$HOME/.cache/lathe/tools}"
ARCH="${LATHE_SASS_ARCH:-sm_90a}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"

usage() {
  echo "usage: scripts/sass.sh [--dump] <kernels/cuda/file.cu | object.o | k.cubin> [kernel-name-regex]" >&2
  exit 2
}

dump=0
if [[ "${1:-}" == "--dump" ]]; then
  dump=1
  shift
fi
(($# >= 1 && $# <= 2)) || usage
src="$1"
filter="${2:-.}"
[[ -f "$src" ]] || { echo "sass.sh: no such file: $src" >&2; exit 2; }
[[ -x "$NVCC" ]] || { echo "sass.sh: nvcc not found (set NVCC)" >&2; exit 1; }

# tool_bin <tool> <sha256>: the pinned nvidia-cuda-<tool> wheel's binary, fetched once.
tool_bin() {
  local tool="$1" sha="$2"
  local dir="$TOOLS_DIR/$tool-$TOOLS_VERSION"
  local bin="$dir/nvidia/cu13/bin/$tool"
  if [[ ! -x "$bin" ]]; then
    local tmp wheel
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps -d "$tmp" "nvidia-cuda-$tool==$TOOLS_VERSION" >&2 ||
      { echo "sass.sh: could not download nvidia-cuda-$tool==$TOOLS_VERSION" >&2; return 1; }
    wheel="$(ls "$tmp"/*.whl)"
    echo "$sha  $wheel" | sha256sum --check --quiet ||
      { echo "sass.sh: sha256 mismatch for $wheel" >&2; rm -rf "$tmp"; return 1; }
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    python3 -m zipfile -e "$wheel" "$dir.partial"
    chmod +x "$dir.partial/nvidia/cu13/bin/$tool"
    rm -rf "$dir" "$tmp" && mv "$dir.partial" "$dir"
  fi
  echo "$bin"
}

CUOBJDUMP="$(tool_bin cuobjdump "$CUOBJDUMP_SHA256")"
NVDISASM="$(tool_bin nvdisasm "$NVDISASM_SHA256")"
export PATH="$(dirname "$NVDISASM"):$PATH"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ "$src" == *.o || "$src" == *.cubin ]]; then
  # An object of an nvcc build (build-nvcc/CMakeFiles/lathe.dir/kernels/cuda/<f>.cu.o): its
  # embedded code for $ARCH, without compiling again.
  "$CUOBJDUMP" -arch "$ARCH" -res-usage "$src" >"$work/res.txt"
  "$CUOBJDUMP" -arch "$ARCH" -sass "$src" >"$work/sass.txt"
else
  # The flags of the real backend's build (cmake/LatheCuda.cmake, Release).
  "$NVCC" -std=c++20 -O3 -arch="$ARCH" -cubin --expt-relaxed-constexpr -DLATHE_CUDA_BUILD=1 \
    -DNDEBUG -I include -I . -o "$work/k.cubin" "$src"
  "$CUOBJDUMP" -res-usage "$work/k.cubin" >"$work/res.txt"
  "$CUOBJDUMP" -sass "$work/k.cubin" >"$work/sass.txt"
fi

python3 - "$work/res.txt" "$work/sass.txt" "$filter" "$dump" <<'PY'
import re, subprocess, sys
from collections import Counter

res_path, sass_path, pattern, dump = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else names

# Resource usage: "Function <mangled>:" then "REG:n STACK:n SHARED:n LOCAL:n ...".
usage, current = {}, None
for line in open(res_path):
    m = re.match(r"\s*Function (\S+):", line)
    if m:
        current = m.group(1)
        continue
    if current and "REG:" in line:
        usage[current] = dict(re.findall(r"(\w+):(\d+)", line))
        current = None

# SASS: "Function : <mangled>" then lines "/*0040*/  [@P0] OPCODE.MODS operands ;".
code, current = {}, None
for line in open(sass_path):
    m = re.match(r"\s*Function : (\S+)", line)
    if m:
        current = m.group(1)
        code[current] = []
        continue
    if current is None:
        continue
    m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
    if m:
        code[current].append((int(m.group(1), 16), m.group(2)))

# Opcode classes that say where a kernel's issue slots go.
CLASSES = [
    ("tensor", r"^(HMMA|HGMMA|IMMA)"),
    ("ldmatrix", r"^LDSM"),
    ("spill ld/st", r"^(LDL|STL)$"),
    ("shared ld/st", r"^(LDS|STS)"),
    ("global ld", r"^(LDG|LD)$|^LDG"),
    ("global st", r"^(STG|ST|RED|ATOM)$|^(STG|RED|ATOM)"),
    ("cp.async", r"^LDGSTS|^LDGDEPBAR|^DEPBAR"),
    ("shuffle", r"^SHFL"),
    ("special fn", r"^MUFU"),
    ("fp32", r"^(FFMA|FADD|FMUL|FMNMX|FSEL|FSETP|FCHK|FSET)"),
    ("convert", r"^(F2F|F2FP|I2F|F2I|PRMT|HADD2|HMUL2|HFMA2)"),
    ("int/address", r"^(IMAD|IADD3|LEA|SHF|LOP3|IABS|IMNMX|ISETP|SEL|MOV|S2R|CS2R|S2UR|ULDC|U)"),
    ("control", r"^(BRA|BSSY|BSYNC|EXIT|BAR|WARPSYNC|CALL|RET|NOP|YIELD|VOTE|PLOP3|P2R|R2P)"),
]

names = [n for n in code]
pretty = dict(zip(names, demangle(names)))
shown = 0
for name in names:
    full = pretty[name]
    if not re.search(pattern, full):
        continue
    shown += 1
    ops = [re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0] for _, ins in code[name]]
    ops = [o for o in ops if not o.startswith("NOP")]
    base = Counter(o.split(".")[0] for o in ops)
    u = usage.get(name, {})
    # Shorten the template signature: the kernel's name and template arguments say enough.
    short = full.replace("(anonymous namespace)::", "").replace("lathe::kernels::cuda::", "")
    short = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", short)  # the parameter list
    print(f"== {short}")
    # Spills live in the stack frame (STACK), not in LOCAL (which stays 0 for a spilling kernel):
    # the STL/LDL count is the reliable sign.
    spill_ops = sum(c for op, c in base.items() if op in ("STL", "LDL"))
    print(f"   registers {u.get('REG', '?')}, spills {spill_ops} STL/LDL, stack {u.get('STACK', '?')} B, "
          f"local {u.get('LOCAL', '?')} B, static shared {u.get('SHARED', '?')} B, "
          f"{len(ops)} instructions")
    by_class, claimed = [], set()
    for label, rx in CLASSES:
        n = sum(c for op, c in base.items() if op not in claimed and re.search(rx, op))
        claimed |= {op for op in base if re.search(rx, op)}
        if n:
            by_class.append(f"{label} {n}")
    rest = sum(c for op, c in base.items() if op not in claimed)
    if rest:
        by_class.append(f"other {rest}")
    print("   " + ", ".join(by_class))
    print("   top: " + ", ".join(f"{op} {c}" for op, c in base.most_common(12)))
    # Loops: a branch to an earlier address closes one; its body is [target, branch].
    for addr, ins in code[name]:
        m = re.search(r"\bBRA(?:\.\w+)*\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", ins)
        if not m or m.group(1) is None:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        body = [i for a, i in code[name] if target <= a <= addr and not i.startswith("NOP")]
        mix = Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in body)
        top = ", ".join(f"{op} {c}" for op, c in mix.most_common(6))
        print(f"   loop 0x{target:x}-0x{addr:x}: {len(body)} instructions ({top})")
    if dump:
        for addr, ins in code[name]:
            print(f"     /*{addr:04x}*/ {ins}")
if shown == 0:
    print(f"sass.sh: no kernel matches '{pattern}'", file=sys.stderr)
    sys.exit(1)
PY
