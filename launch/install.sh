#!/usr/bin/env bash
# hvdfast installer: the one install path used by the README, CI and the Dockerfiles.
#
# Idempotent. Creates a virtual environment (default: .venv in the checkout; HVDFAST_VENV=DIR to change it),
# installs MPI when it is missing and we are root, the Python stack, and Horovod 0.28.1 built from its PyPI
# source distribution with a small build-time patch (see README, "The Horovod build patch"). The built Horovod
# wheel is cached outside the checkout (HVDFAST_CACHE, default ~/.cache/hvdfast) keyed by everything that
# changes the binary, so a second install on the same machine takes seconds.
#
# Environment knobs:
#   HVDFAST_VENV=DIR         where the venv lives (default: <checkout>/.venv)
#   HVDFAST_CACHE=DIR        wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdfast)
#   PYTHON=python3.X         interpreter used to create the venv
#   HVDFAST_DALI=cuda130|cuda120|none   DALI build (default: matches torch's CUDA major version)
#   HVDFAST_NO_APT=1         never call apt-get (use the MPI on PATH or build Horovod with Gloo only)
#   HVDFAST_NCCL=auto|1|0    build Horovod's NCCL operations: auto = when nvidia-smi sees a GPU; 1 = always (image
#                            builds, where no GPU is visible); 0 = never
#   HVDFAST_TORCH=pypi|keep  pypi (default): install the torch/torchvision pinned below; keep: use the torch already
#                            in HVDFAST_VENV, e.g. a vendor image's (NGC containers, a GPU node's module): point
#                            HVDFAST_VENV at that environment's prefix (python -c 'import sys; print(sys.prefix)')
#   HVDFAST_EXTRAS=test      hvdfast's pip extras (default test; empty for what training alone needs)
# Offline (air-gapped clusters): PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR, with DIR holding Horovod's sdist and any wheel
# the environment lacks; pip reads both variables, and every download below goes through pip.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDFAST_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
CACHE=${HVDFAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdfast}
HOROVOD_VERSION=0.28.1
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
DALI_VERSION=2.4.0
JOBS=$(nproc 2>/dev/null || echo 2)

log() { echo "[hvdfast install] $*" >&2; }
die() { echo "[hvdfast install] ERROR: $*" >&2; exit 1; }

# The build-time patch to Horovod's source (the whole of it). Horovod 0.28.1 compiles with C++14; torch >= 2.14's
# headers require C++20. Both the top-level CMakeLists.txt (which Gloo inherits) and the torch one must change.
PATCH_FILES="CMakeLists.txt horovod/torch/CMakeLists.txt"
PATCH_SED='s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/'
# And Gloo's fp16 sums, which Horovod's Gloo controller uses for fp16 tensors (fp16 compression, elastic runs):
# - gloo/types.h: float16's operator!= compares against the other value's raw bits converted as an integer, and the
#   copy assignment skips the store when that says "equal", so c[i] = a[i] + b[i] sometimes keeps the old c[i]
#   (91 of 3,000,001 random fp16 sums of 2 ranks came back as one operand, e.g. 20736 + 7840 = 7840). Fixed to
#   compare the values.
# - CMakeLists.txt: Gloo has AVX/F16C kernels for fp16 sums (gloo/math.cc) behind `#if GLOO_USE_AVX`, but Horovod's
#   copy of Gloo does not compile math.cc and nothing defines the macro, so every element is converted in software
#   (an allreduce of 12.8M fp16 values took 150-160 ms against 40-50 ms with the kernels, 2 ranks on one machine).
#   The block compiles math.cc into Gloo and defines the macro for Gloo and for Horovod's own sources
#   (gloo_operations.cc must see the kernels' declarations), only where Horovod already compiles with -mavx and
#   -mf16c (its ARCH_FLAGS, taken when the building CPU has them), so no CPU requirement is added.
PATCH_F16_SED='s/return !(\*this == rhs\.x);/return !(*this == rhs);/'
PATCH_GLOO_SED='s|^    add_subdirectory(third_party/gloo)$|&\n    if(CMAKE_CXX_FLAGS MATCHES "-mavx" AND CMAKE_CXX_FLAGS MATCHES "-mf16c")\n        target_sources(gloo PRIVATE "${PROJECT_SOURCE_DIR}/third_party/gloo/gloo/math.cc")\n        target_compile_definitions(gloo PRIVATE GLOO_USE_AVX=1)\n        add_definitions(-DGLOO_USE_AVX=1)\n    endif()|'
# And Horovod's parameter manager, whose state outlives hvd.shutdown() (an elastic reset shuts down and initialises
# again in the same process): every init first sets the fusion threshold and the cycle time to Horovod's defaults as
# tunable values, then fixes those the environment sets. The tunable setter writes into a vector that holds only
# the variables not fixed yet, at an index it looks up with operator[] (0 for a fixed variable); on the second init
# of a process with both HOROVOD_FUSION_THRESHOLD and HOROVOD_CYCLE_TIME set that vector is empty and the write is
# out of bounds (exit 139 in hvd.init(): 3 init/allreduce/shutdown rounds under `horovodrun --gloo -np 1`; with
# only one set, the write lands in the other variable's slot). The patch leaves a variable that is already fixed alone.
PATCH_PM_SED='/^void ParameterManager::BayesianParameter::SetValue/,/^}/ s/^  } else {$/  } else if (fixed_values_.find(variable) == fixed_values_.end()) {/'
# And horovodrun's exit status after Ctrl-C (horovod/runner/common/util/safe_shell_exec.py): each worker's middleman
# waits for its shell with Popen.wait() while the thread that stops it waits with psutil, which reaps a child; when
# psutil reaps first, Popen.wait() finds no child and reads exit status 0 (2 of 20 stops here), and horovodrun
# can report success for a stopped run. The stopping thread now waits for the shell without reaping it
# (waitid with WNOWAIT), leaving the reaping, and the status, to Popen.wait(). Two more races in the same function
# (1 stop in 150 of tests/test_install.py's under load, 2026-11-28): the shell freezes itself with SIGSTOP before
# SIGTERM, and a stopped process acts on no signal but SIGKILL and SIGCONT, so a shell still running at that moment
# (its child just stopped, its own exit not yet scheduled) kept the TERM pending until the SIGKILL 5 s later (exit
# 137); it now gets SIGCONT after the TERM. And a shell that exits between two psutil calls raised NoSuchProcess
# in the stopping thread (a traceback on horovodrun's stderr); it now counts as having no children.
# Each edit of safe_shell_exec.py: an anchor that must match exactly one line, and the line that replaces it.
SSE_ANCHORS=(
  '^        p.wait(timeout=GRACEFUL_TERMINATION_TIME_S)$'
  '^        p.terminate()$'
  '^    gone, alive = psutil.wait_procs(p.children(), timeout=GRACEFUL_TERMINATION_TIME_S)$'
  '^    for child in p.children():$'
)
SSE_CALLS=(
  '        _wait_without_reaping(p, GRACEFUL_TERMINATION_TIME_S)  # hvdfast build patch'
  '        p.terminate(); p.send_signal(signal.SIGCONT)  # hvdfast build patch: stopped, it would not act on TERM'
  '    gone, alive = psutil.wait_procs(_children(p), timeout=GRACEFUL_TERMINATION_TIME_S)  # hvdfast build patch'
  '    for child in _children(p):  # hvdfast build patch'
)
# ... and the helpers they call, inserted after GRACEFUL_TERMINATION_TIME_S:
SSE_HELPERS='

def _children(p):
    """hvdfast build patch: the children of p, none once p is gone."""
    try:
        return p.children()
    except psutil.NoSuchProcess:
        return []

def _wait_without_reaping(p, timeout):
    """hvdfast build patch: wait for child p to exit but leave it to Popen.wait() to reap it (and read its status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:  # not a child of ours, or reaped already: psutil takes nothing from us
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        if time.monotonic() >= deadline:
            raise psutil.TimeoutExpired(timeout, p.pid)
        time.sleep(0.01)'
# And horovodrun's build check (horovod/common/util.py): every launch asks whether the extension was built with Gloo
# (or MPI) by importing it in a forked process, which imports torch: 3.1 s here before any worker starts, on every
# `horovodrun` (about a hundred in the test suite). What was built changes only with the extension's file, so the
# answer is kept beside util.py, keyed by that file's name, size and mtime (a rebuild or reinstall asks again; a
# read-only install asks every time). Not the GPU check (gpu_available: the machine, not the build), not with
# --verbose, and no answer of None (the import failed: asked again next time). install.sh asks once after installing
# (horovodrun --check-build), so an image starts with the answer.
PATCH_UTIL_ANCHOR='^def _check_extension_lambda(ext_base_name, fn, fn_desc, verbose):$'
PATCH_UTIL_PY='

# hvdfast build patch: the build checks (gloo_built, mpi_built, ...) answered from a file beside this one.
_hvdfast_check_uncached = _check_extension_lambda


def _check_extension_lambda(ext_base_name, fn, fn_desc, verbose):
    import glob
    import json
    if verbose or not fn_desc.startswith("built"):
        return _hvdfast_check_uncached(ext_base_name, fn, fn_desc, verbose)
    here = os.path.dirname(os.path.abspath(__file__))
    libs = sorted(glob.glob(os.path.join(here, "..", ext_base_name, "mpi_lib*")))
    built = ["{} {} {}".format(os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in libs]
    key = "{} {}".format(ext_base_name, fn_desc)
    path = os.path.join(here, ".hvdfast_build_checks.json")
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = None
    cache = cache if isinstance(cache, dict) else {}
    entry = cache.get(key)
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == built:
        return entry[1]
    result = _hvdfast_check_uncached(ext_base_name, fn, fn_desc, verbose)
    if result is not None and libs:
        cache[key] = [built, result]
        try:
            tmp = "{}.{}".format(path, os.getpid())
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, path)
        except OSError:
            pass
    return result'
# And Horovod's background thread while nothing is queued (horovod/common/{tensor_queue.h,tensor_queue.cc,operations.cc}):
# it runs a coordination round every cycle (HOROVOD_CYCLE_TIME; 5 ms as `tune --hosts` sets it) whether or not any tensor is
# waiting, and on a worker that computes on the same cores those rounds cost compute: a ResNet-50 step with no
# communication at all took 1.030x as long once hvd.init() had started the thread (Gloo, one rank, 5 ms cycles; 1.003x
# with a 1,000 ms cycle; alternating init/shutdown, 6 rounds of 3 steps; Horovod issue #2804 saw the same on CPU
# nodes). With HVDFAST_IDLE_WAIT_MS set (hvdfast's horovod.idle_wait_ms), a background thread whose rank has nothing
# queued in any process set waits for the next enqueue (or shutdown), at most that long, instead of cycling; with
# anything queued it cycles as before. Rounds stay collective and in the same order on every rank (only their
# timing moves), so nothing can deadlock: a rank with a tensor ready waits in the round for a rank still computing,
# as it does today, and that rank joins the round the moment it enqueues the same tensor. Unset, Horovod is unchanged.
PATCH_IDLE_H='
// hvdfast build patch: the background thread waits for the next enqueue while nothing is queued on its rank.
void HvdfastWakeBackgroundThread();
uint64_t HvdfastWakeups();
void HvdfastWaitForWakeup(uint64_t seen, double timeout_ms);
struct HvdfastEnqueueNotifier {
  ~HvdfastEnqueueNotifier() { HvdfastWakeBackgroundThread(); }
};'
PATCH_IDLE_CC='
// hvdfast build patch: the background thread waits for the next enqueue while nothing is queued on its rank.
#include <chrono>
#include <condition_variable>
namespace horovod {
namespace common {
namespace {
std::mutex hvdfast_wake_mutex;
std::condition_variable hvdfast_wake_cv;
uint64_t hvdfast_wakeups = 0;
} // namespace

void HvdfastWakeBackgroundThread() {
  {
    std::lock_guard<std::mutex> lock(hvdfast_wake_mutex);
    ++hvdfast_wakeups;
  }
  hvdfast_wake_cv.notify_all();
}

uint64_t HvdfastWakeups() {
  std::lock_guard<std::mutex> lock(hvdfast_wake_mutex);
  return hvdfast_wakeups;
}

void HvdfastWaitForWakeup(uint64_t seen, double timeout_ms) {
  std::unique_lock<std::mutex> lock(hvdfast_wake_mutex);
  hvdfast_wake_cv.wait_for(lock, std::chrono::microseconds(long(timeout_ms * 1000.)),
                           [seen] { return hvdfast_wakeups != seen; });
}

bool TensorQueue::HvdfastIsEmpty() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return tensor_table_.empty();
}

} // namespace common
} // namespace horovod'
PATCH_IDLE_OPS='
// hvdfast build patch: with nothing queued on this rank in any process set, wait for the next enqueue or
// shutdown, at most HVDFAST_IDLE_WAIT_MS, instead of a coordination round every cycle (0, the default: Horovod'"'"'s
// own cycle). Returns whether it waited (the cycle'"'"'s sleep is then skipped).
bool HvdfastIdleWait(HorovodGlobalState& state) {
  static const double idle_ms = GetDoubleEnvOrDefault("HVDFAST_IDLE_WAIT_MS", 0.0);
  if (idle_ms <= 0) {
    return false;
  }
  uint64_t seen = HvdfastWakeups();
  for (auto id : state.process_set_table.Ids()) {
    if (!state.process_set_table.Get(id).tensor_queue.HvdfastIsEmpty()) {
      return false;
    }
  }
  if (state.shut_down) {
    return false;
  }
  HvdfastWaitForWakeup(seen, idle_ms);
  return true;
}'
# Newer toolchains than Horovod 0.28.1 knew (both met on Ubuntu 24.04, the GPU image's base; no source change):
# - GCC >= 13 no longer pulls <string>/<cstdint> in transitively (horovod/common/group_table.h uses std::string);
# - CMake >= 4 refuses the cmake_minimum_required(VERSION 2.8) of Horovod's bundled Gloo and flatbuffers unless
#   CMAKE_POLICY_VERSION_MINIMUM is given, which Horovod's setup.py cannot pass: HOROVOD_CMAKE points at a wrapper.
BUILD_CXXFLAGS="-include cstdint -include string"

# ---------------------------------------------------------------------------------------------------------------
# Fast path: nothing changed since the last successful install.
stamp_want=$(cat "$ROOT/launch/install.sh" "$ROOT/setup.py" | sha256sum | cut -c1-16)
stamp_file=$VENV/.hvdfast-install-stamp
if [ -x "$VENV/bin/python" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_want" ] \
   && "$VENV/bin/python" -c "import torch, horovod.torch, hvdfast" >/dev/null 2>&1; then
  log "up to date ($VENV)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# 1. System packages (only when root and only what is missing).
need_apt=()
command -v g++ >/dev/null || need_apt+=(g++)
command -v cmake >/dev/null || need_apt+=(cmake)
if ! command -v make >/dev/null; then
  # CMake reads CMAKE_GENERATOR: images with pip's cmake and ninja but no make (the lent GPU machines) build with it.
  if command -v ninja >/dev/null; then export CMAKE_GENERATOR=${CMAKE_GENERATOR:-Ninja}; else need_apt+=(make); fi
fi
MPI=none
if command -v mpicc >/dev/null; then
  MPI=existing
  log "MPI: using $(command -v mpicc) ($(mpirun --version 2>/dev/null | head -n1))"
elif [ "${HVDFAST_NO_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  MPI=apt
  # openssh-client: Open MPI's launcher wants an rsh agent, and multi-host runs need it.
  need_apt+=(libopenmpi-dev openmpi-bin openssh-client)
else
  log "MPI: no mpicc on PATH and cannot install one (not root or no apt-get): building Horovod with Gloo only."
  log "     To use MPI, load your cluster's MPI module (so mpicc is on PATH) and re-run this script."
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${HVDFAST_NO_APT:-0}" != 1 ]; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    die "missing system tools: ${need_apt[*]}. Install them (or load the modules) and re-run."
  fi
fi
[ $MPI = apt ] && MPI=existing

# ---------------------------------------------------------------------------------------------------------------
# 2. Virtual environment and the Python stack.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
pip_install() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }

if [ "${HVDFAST_TORCH:-pypi}" = keep ]; then
  "$VPY" -c "import torch, torchvision" 2>/dev/null \
    || die "HVDFAST_TORCH=keep but $VPY has no torch/torchvision (point HVDFAST_VENV at the environment that has them)"
  log "torch / torchvision: keeping $("$VPY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)")"
else
  log "torch / torchvision"
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi
# Horovod's build and runtime needs (we build with --no-build-isolation so it sees the installed torch).
pip_install "setuptools>=64" wheel cloudpickle psutil pyyaml packaging cffi   # >= 64: PEP 660 editables

TORCH_INFO=$("$VPY" -c "import torch,sys; print(torch.__version__, torch.version.cuda or 'cpu', '%d.%d' % sys.version_info[:2])")
read -r TORCH_VER TORCH_CUDA PY_VER <<<"$TORCH_INFO"

DALI=${HVDFAST_DALI:-}
if [ -z "$DALI" ]; then
  case $TORCH_CUDA in 12.*) DALI=cuda120 ;; *) DALI=cuda130 ;; esac
fi
extras=${HVDFAST_EXTRAS-test}
if [ "$DALI" != none ]; then pip_install "nvidia-dali-$DALI==$DALI_VERSION"; fi
if [ $MPI = existing ]; then
  # Built from source against the MPI that mpirun will use (a binary wheel may carry a different ABI).
  log "mpi4py (built against $(command -v mpicc))"
  pip_install --no-binary mpi4py mpi4py
fi
log "hvdfast (editable${extras:+, with extras: $extras})"
# Built with the setuptools installed above, through PEP 660: pip's default for a setup.py-only project is
# `setup.py develop`, which setuptools >= 80 runs as a second pip with build isolation, and that one wants a
# setuptools wheel from an index (air-gapped, it failed on a lent H200; pip 23.2 + setuptools 84.2 fail here too).
pip_install --no-build-isolation --use-pep517 -e "$ROOT${extras:+[$extras]}"

# ---------------------------------------------------------------------------------------------------------------
# 3. Horovod from source, patched at build time, cached as a wheel.
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
if [ $MPI = existing ]; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
export MAKEFLAGS="-j$JOBS"   # Horovod's setup.py otherwise runs make -j8, whatever the machine.

# CUDA: torch from PyPI is a CUDA build, so Horovod's torch extension is built with CUDA support (it can then take
# CUDA tensors, and NCCL where there is a GPU). CMake must be told where the real toolkit is: the nvcc on PATH may
# be a wrapper script from which it cannot derive the root.
CUDA_OPT=cpu
if [ "$TORCH_CUDA" != cpu ]; then
  for cand in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")")"; do
    if [ -n "$cand" ] && [ -f "$cand/include/cuda_runtime.h" ] && [ -x "$cand/bin/nvcc" ]; then
      CUDA_ROOT=$(readlink -f "$cand"); break
    fi
  done
  if [ -n "${CUDA_ROOT:-}" ]; then
    export CUDA_HOME=$CUDA_ROOT CUDAToolkit_ROOT=$CUDA_ROOT
    CUDA_OPT=cuda$("$CUDA_ROOT/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
    # NCCL where there is a GPU to run it (or HVDFAST_NCCL=1: image builds see no GPU) and an nccl.h to build
    # against.
    if [ "${HVDFAST_NCCL:-auto}" = 1 ] || { [ "${HVDFAST_NCCL:-auto}" = auto ] && nvidia-smi -L >/dev/null 2>&1; }; then
      NCCL_DIR=${HOROVOD_NCCL_HOME:-$("$VPY" -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])" 2>/dev/null || true)}
      if [ -n "$NCCL_DIR" ] && [ -f "$NCCL_DIR/include/nccl.h" ]; then
        # pip's NCCL ships libnccl.so.2 only; Horovod's FindNCCL looks for libnccl.so.
        [ -e "$NCCL_DIR/lib/libnccl.so" ] || ln -s libnccl.so.2 "$NCCL_DIR/lib/libnccl.so"
        export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=$NCCL_DIR
        CUDA_OPT=$CUDA_OPT-nccl
      else
        log "GPU present but no NCCL headers found: Horovod will stage CUDA tensors through the CPU."
      fi
    fi
  else
    log "torch is a CUDA build but no CUDA toolkit was found: building Horovod for CPU tensors only."
  fi
fi

MPI_ID=none
[ $MPI = existing ] && MPI_ID=$( (mpirun --version 2>/dev/null | head -n1; mpicc -show 2>/dev/null) | sha256sum | cut -c1-8)
PATCH_ID=$(printf '%s|' "$PATCH_FILES" "$PATCH_SED" "$PATCH_F16_SED" "$PATCH_GLOO_SED" "$PATCH_PM_SED" \
           "${SSE_ANCHORS[@]}" "${SSE_CALLS[@]}" "$SSE_HELPERS" "$PATCH_UTIL_ANCHOR" "$PATCH_UTIL_PY" \
           "$PATCH_IDLE_H" "$PATCH_IDLE_CC" "$PATCH_IDLE_OPS" \
           "$BUILD_CXXFLAGS" | sha256sum | cut -c1-8)
KEY="horovod-$HOROVOD_VERSION-torch$TORCH_VER-py$PY_VER-mpi$MPI_ID-gloo-$CUDA_OPT-patch$PATCH_ID"
WHEEL_DIR=$CACHE/wheels/$KEY
installed_key=$(cat "$VENV/.hvdfast-horovod-key" 2>/dev/null || true)

if [ "$installed_key" = "$KEY" ] && "$VPY" -c "import horovod.torch" >/dev/null 2>&1; then
  log "Horovod $HOROVOD_VERSION already installed ($KEY)"
else
  if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
    log "building Horovod $HOROVOD_VERSION from source ($KEY); takes a few minutes"
    src=$(mktemp -d "${TMPDIR:-/tmp}/hvdfast-horovod.XXXXXX")
    trap 'rm -rf "$src"' EXIT
    "$VPY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "horovod==$HOROVOD_VERSION" -d "$src"
    tar -xzf "$src/horovod-$HOROVOD_VERSION.tar.gz" -C "$src"
    tree=$src/horovod-$HOROVOD_VERSION
    for f in $PATCH_FILES; do
      grep -q 'set(CMAKE_CXX_STANDARD 14)' "$tree/$f" || die "Horovod patch no longer applies to $f"
      sed -i "$PATCH_SED" "$tree/$f"
    done
    [ "$(grep -c '^    add_subdirectory(third_party/gloo)$' "$tree/CMakeLists.txt")" = 1 ] \
      || die "Horovod patch (Gloo's AVX fp16 sum) no longer applies to CMakeLists.txt"
    sed -i "$PATCH_GLOO_SED" "$tree/CMakeLists.txt"
    grep -q 'return !(\*this == rhs\.x);' "$tree/third_party/gloo/gloo/types.h" \
      || die "Horovod patch (Gloo's float16 comparison) no longer applies to third_party/gloo/gloo/types.h"
    sed -i "$PATCH_F16_SED" "$tree/third_party/gloo/gloo/types.h"
    pm=$tree/horovod/common/parameter_manager.cc
    [ "$(awk '/^void ParameterManager::BayesianParameter::SetValue/,/^}/' "$pm" | grep -c '^  } else {$')" = 1 ] \
      || die "Horovod patch (parameter manager) no longer applies to horovod/common/parameter_manager.cc"
    sed -i "$PATCH_PM_SED" "$pm"
    sse=$tree/horovod/runner/common/util/safe_shell_exec.py
    grep -q '^GRACEFUL_TERMINATION_TIME_S = 5$' "$sse" \
      || die "Horovod patch (horovodrun's exit status) no longer applies to horovod/runner/common/util/safe_shell_exec.py"
    for i in "${!SSE_ANCHORS[@]}"; do
      [ "$(grep -c "${SSE_ANCHORS[$i]}" "$sse")" = 1 ] \
        || die "Horovod patch (horovodrun's exit status) no longer applies to safe_shell_exec.py: ${SSE_ANCHORS[$i]}"
      sed -i "s/${SSE_ANCHORS[$i]}/${SSE_CALLS[$i]}/" "$sse"
    done
    printf '%s\n' "$SSE_HELPERS" > "$src/sse_helpers.py"
    sed -i "/^GRACEFUL_TERMINATION_TIME_S = 5$/r $src/sse_helpers.py" "$sse"
    [ "$(grep -c "$PATCH_UTIL_ANCHOR" "$tree/horovod/common/util.py")" = 1 ] \
      || die "Horovod patch (horovodrun's build check) no longer applies to horovod/common/util.py"
    printf '%s\n' "$PATCH_UTIL_PY" >> "$tree/horovod/common/util.py"
    common=$tree/horovod/common
    [ "$(grep -c '^namespace common {$' "$common/tensor_queue.h")" = 1 ] \
      && [ "$(grep -c '^  void RemoveJoinTensor();$' "$common/tensor_queue.h")" = 1 ] \
      && [ "$(awk '/^Status TensorQueue::AddToTensorQueue/,/^}/' "$common/tensor_queue.cc" \
              | grep -c '^  std::lock_guard<std::mutex> guard(mutex_);$')" = 2 ] \
      && [ "$(grep -c '^bool RunLoopOnce(HorovodGlobalState& state);$' "$common/operations.cc")" = 1 ] \
      && [ "$(grep -c '^  if (sleep_duration > std::chrono::steady_clock::duration::zero()) {$' "$common/operations.cc")" = 1 ] \
      && [ "$(grep -c '^    horovod_global.shut_down = true;$' "$common/operations.cc")" = 1 ] \
      || die "Horovod patch (the background thread's idle wait) no longer applies to horovod/common"
    printf '%s\n' "$PATCH_IDLE_H" > "$src/idle.h"
    printf '%s\n' "$PATCH_IDLE_OPS" > "$src/idle_ops.cc"
    sed -i "/^namespace common {\$/r $src/idle.h" "$common/tensor_queue.h"
    sed -i 's|^  void RemoveJoinTensor();$|&\n\n  bool HvdfastIsEmpty() const;  // hvdfast build patch|' "$common/tensor_queue.h"
    sed -i '/^Status TensorQueue::AddToTensorQueue/,/^}/ s|^  std::lock_guard<std::mutex> guard(mutex_);$|  HvdfastEnqueueNotifier hvdfast_notify;  // hvdfast build patch: notifies once the lock is released\n&|' \
        "$common/tensor_queue.cc"
    printf '%s\n' "$PATCH_IDLE_CC" >> "$common/tensor_queue.cc"
    sed -i "/^bool RunLoopOnce(HorovodGlobalState& state);\$/r $src/idle_ops.cc" "$common/operations.cc"
    sed -i 's|^  if (sleep_duration > std::chrono::steady_clock::duration::zero()) {$|  if (!HvdfastIdleWait(state) \&\& sleep_duration > std::chrono::steady_clock::duration::zero()) {|' \
        "$common/operations.cc"
    sed -i 's|^    horovod_global.shut_down = true;$|&\n    HvdfastWakeBackgroundThread();  // hvdfast build patch|' "$common/operations.cc"
    mkdir -p "$WHEEL_DIR.tmp"
    export CXXFLAGS="${CXXFLAGS:-} $BUILD_CXXFLAGS"
    cmake_major=$(cmake --version | sed -n 's/^cmake version \([0-9]*\).*/\1/p')
    if [ "${cmake_major:-0}" -ge 4 ]; then
      printf '#!/bin/sh\ncase "$1" in --*) exec %s "$@";; esac\nexec %s -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "$@"\n' \
        "$(command -v cmake)" "$(command -v cmake)" > "$src/cmake"
      chmod +x "$src/cmake"
      export HOROVOD_CMAKE=$src/cmake
    fi
    if ! (cd "$tree" && "$VPY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
            -w "$WHEEL_DIR.tmp" . > "$src/build.log" 2>&1); then
      tail -n 40 "$src/build.log" >&2
      die "Horovod build failed (full log above; re-run with the same environment to retry)"
    fi
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  else
    log "Horovod wheel from cache: $WHEEL_DIR"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
  echo "$KEY" > "$VENV/.hvdfast-horovod-key"
fi
# horovodrun's build check, asked once here (PATCH_UTIL_PY keeps the answer for every later launch)
"$VENV/bin/horovodrun" --check-build >/dev/null 2>&1 || true

"$VPY" -c "import horovod.torch" \
  || { rm -rf "$WHEEL_DIR"; die "Horovod installed but does not import (see the error above; its cached wheel is removed)"; }
echo "$stamp_want" > "$stamp_file"
log "done: activate with 'source $VENV/bin/activate'; check with 'hvdfast doctor'"
