#!/usr/bin/env bash
# The accelerator check of docs/accelerators.md, as one script: under 8 minutes on one GPU.
#
#   bash benchmarks/device_check.sh [OUTDIR]
#
# 1. If JAX sees no accelerator but the machine has one (an NVIDIA GPU, or a TPU), installs
#    jaxtune with JAX's own build for it (".[dev,cuda12]" or ".[dev,tpu]") into a fresh virtual
#    environment and uses that. With no accelerator at all it goes on with the current Python
#    and says which GPU-only rows it skips.
# 2. Prints the devices JAX sees.
# 3. Runs the tests that matter on an accelerator: python -m pytest -m accelerator.
# 4. Runs benchmarks/sweep_throughput.py on the digits MLP beside the hand-written vmap + scan
#    baseline: N = 1, 32, 256, 1024 and N=1024 vs N=1 wall time on an accelerator; a reduced,
#    short N = 1, 32 on a CPU backend.
# 5. Runs benchmarks/execution.py: the workloads x N = 1, 8, 32 x execution forms and auto,
#    beside a loop of solo jitted steps and a hand-written jit(scan(vmap)) (--quick on a CPU).
#
# Output: JSON and logs go to "$OUT" when that variable is set, else to OUTDIR, else to
# benchmarks/results/: device_check_<backend>.json (summary), device_check_<backend>_tests.xml
# and .log (pytest), device_check_<backend>_sweep_throughput.json (rows; partial when cut).
#
# Environment: DEVICE_CHECK_BUDGET_S (seconds for the whole script; default 450 on an
# accelerator, 600 on CPU; the tests and the benchmark are cut to what is left, and the
# benchmark keeps the rows it finished), DEVICE_CHECK_VENV (the virtual environment of step 1;
# default ${TMPDIR:-/tmp}/jaxtune-device-check-venv, reused when its JAX already sees the
# accelerator), DEVICE_CHECK_EXTRA (cuda12 or tpu: skip the hardware detection), and pip's own
# PIP_INDEX_URL / PIP_FIND_LINKS for a machine without PyPI.
#
# Exit status: 0 everything passed; 1 an accelerator test failed; 2 the benchmark failed or
# was cut by the budget; 3 an accelerator is present but no JAX build that sees it could be
# installed.
set -uo pipefail

START=$SECONDS
OUT_DIR="${OUT:-${1:-}}"
if [[ -n "$OUT_DIR" ]]; then
  mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 3
fi
cd "$(dirname "$0")/.." || exit 3
if [[ -z "$OUT_DIR" ]]; then
  OUT_DIR="$(pwd)/benchmarks/results"
fi

say() { printf '\n== %s\n' "$*"; }
elapsed() { echo $((SECONDS - START)); }

PY=${PYTHON:-python}
backend_of() { "$1" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -n 1; }

# --------------------------------------------------------------------------------------------
say "1/5 backend"
have_gpu=0
have_tpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  have_gpu=1
elif compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
  have_gpu=1
fi
if compgen -G '/dev/accel[0-9]*' >/dev/null || compgen -G '/dev/vfio/[0-9]*' >/dev/null; then
  have_tpu=1
fi
extra=${DEVICE_CHECK_EXTRA:-}
if [[ -z "$extra" ]]; then
  if [[ $have_gpu == 1 ]]; then extra=cuda12; elif [[ $have_tpu == 1 ]]; then extra=tpu; fi
fi
if [[ -n "${JAX_PLATFORMS:-}" ]]; then
  echo "note: JAX_PLATFORMS=$JAX_PLATFORMS is set and limits what JAX may use"
fi

backend=$(backend_of "$PY")
echo "current python: $(command -v "$PY") -> jax backend '${backend:-none}'"
used_venv=0
if [[ "$backend" == cpu || -z "$backend" ]] && [[ -n "$extra" ]]; then
  VENV=${DEVICE_CHECK_VENV:-${TMPDIR:-/tmp}/jaxtune-device-check-venv}
  echo "an accelerator is present (jaxtune[$extra]) but JAX does not see it"
  vb=""
  if [[ -x "$VENV/bin/python" ]]; then
    vb=$(backend_of "$VENV/bin/python")
  fi
  if [[ -n "$vb" && "$vb" != cpu ]]; then
    echo "reusing $VENV (jax backend '$vb')"
  else
    echo "installing jaxtune[dev,$extra] into a fresh virtual environment $VENV"
    rm -rf "$VENV"
    t0=$SECONDS
    if ! "$PY" -m venv "$VENV" ||
      ! "$VENV/bin/python" -m pip install -q --upgrade pip ||
      ! "$VENV/bin/python" -m pip install -q -e ".[dev,$extra]"; then
      echo "device_check: could not install jaxtune[dev,$extra] (no network? set PIP_INDEX_URL" \
        "or PIP_FIND_LINKS to a wheelhouse, or install it yourself and rerun)" >&2
      exit 3
    fi
    echo "installed in $((SECONDS - t0)) s"
    vb=$(backend_of "$VENV/bin/python")
  fi
  if [[ -z "$vb" || "$vb" == cpu ]]; then
    echo "device_check: JAX in $VENV still sees no accelerator (backend '${vb:-none}');" \
      "see the messages of: $VENV/bin/python -c 'import jax; jax.devices()'" >&2
    "$VENV/bin/python" -c "import jax; print(jax.devices())" 2>&1 | tail -n 5 >&2
    exit 3
  fi
  PY="$VENV/bin/python"
  backend=$vb
  used_venv=1
elif [[ -z "$backend" ]]; then
  echo "device_check: '$PY' cannot import jax; install the project first" \
    "(python -m pip install -e \".[dev]\")" >&2
  exit 3
fi

skipped=()
if [[ "$backend" == cpu ]]; then
  skipped=("sweep_throughput digits N=256" "sweep_throughput digits N=1024"
    "sweep_throughput --gpu-large (N=1024 vs N=1 wall time)")
  echo "no accelerator on this machine: running on CPU with the current Python."
  echo "GPU-only rows are SKIPPED:"
  printf '  - %s\n' "${skipped[@]}"
fi
BUDGET=${DEVICE_CHECK_BUDGET_S:-$([[ "$backend" == cpu ]] && echo 600 || echo 450)}
left() { local l=$((BUDGET - (SECONDS - START))); echo $((l > 10 ? l : 10)); }
TAG="device_check_${backend}"

# --------------------------------------------------------------------------------------------
say "2/5 devices"
[[ $have_gpu == 1 ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
"$PY" - <<'EOF'
import jax

print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.process_count()} process(es), {jax.device_count()} device(s)")
for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    mem = f"{limit / 2**30:.1f} GiB usable" if limit else "no memory stats (host memory)"
    print(f"  {d.id}: {d.platform} {d.device_kind}, {mem}")
EOF

# --------------------------------------------------------------------------------------------
say "3/5 tests: python -m pytest -m accelerator"
# The checkpoint test runs a second JAX process beside pytest's own: do not let the first
# process take 75% of the GPU's memory up front (no effect on CPU).
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 "$(left)" \
  "$PY" -m pytest -q -m accelerator -rfE --junitxml="$OUT_DIR/${TAG}_tests.xml" 2>&1 |
  tee "$OUT_DIR/${TAG}_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "tests: exit $tests_rc$([[ $tests_rc == 124 || $tests_rc == 137 ]] && echo " (cut by the ${BUDGET} s budget)")"
if [[ $tests_rc != 0 && "$backend" == gpu && $(left) -gt 60 ]]; then
  echo "diagnosis: the failed tests again with deterministic GPU ops and full float32 matmuls"
  XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" \
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout -k 10 "$(left)" \
    "$PY" -m pytest -q -m accelerator --lf -rfE 2>&1 | tee "$OUT_DIR/${TAG}_tests_rerun.log"
  echo "diagnosis rerun: exit ${PIPESTATUS[0]} (the check's status stays that of the first run)"
fi

# --------------------------------------------------------------------------------------------
say "4/5 benchmark: digits MLP, run_sweep beside the hand-written vmap + scan"
BENCH_JSON="$OUT_DIR/${TAG}_sweep_throughput.json"
if [[ "$backend" == cpu ]]; then
  bench_args=(--n 1,32 --min-time 0.3 --max-chunks 8 --repeats 2 --per-call 8)
else
  bench_args=(--n 1,32,256,1024 --gpu-large --min-time 0.5 --per-call 32)
fi
echo "python benchmarks/sweep_throughput.py --models digits ${bench_args[*]}" \
  "--no-shard --no-batch-sizes --out $BENCH_JSON"
timeout -k 10 "$(left)" "$PY" benchmarks/sweep_throughput.py --models digits "${bench_args[@]}" \
  --no-shard --no-batch-sizes --out "$BENCH_JSON"
bench_rc=$?
bench_cut=0
if [[ $bench_rc == 124 || $bench_rc == 137 ]]; then
  bench_cut=1
  echo "benchmark cut by the ${BUDGET} s budget; the rows it finished (if any) are in $BENCH_JSON"
fi
echo "benchmark: exit $bench_rc"
if [[ "$backend" == cpu ]]; then
  echo "GPU-only rows SKIPPED (no GPU):"
  printf '  - %s\n' "${skipped[@]}"
fi

# --------------------------------------------------------------------------------------------
say "5/5 benchmark: execution forms (benchmarks/execution.py), workloads x N x form + auto"
EXEC_JSON="$OUT_DIR/${TAG}_execution.json"
if [[ "$backend" == cpu ]]; then
  exec_args=(--quick)
else
  # On a GPU a scan costs nothing and vmapped convolutions are grouped: scan/map is measured.
  exec_args=(--workloads digits_mlp,digits_cnn,images32_cnn,bytes_lm --n 1,8,32
    --forms scan/vmap,scan/map,host/vmap,host/unroll --chunk 20 --repeats 2 --min-time 0.5)
fi
echo "python benchmarks/execution.py ${exec_args[*]} --out $EXEC_JSON"
timeout -k 10 "$(left)" "$PY" benchmarks/execution.py "${exec_args[@]}" --out "$EXEC_JSON"
exec_rc=$?
echo "execution benchmark: exit $exec_rc (rows it finished are in $EXEC_JSON)"

# --------------------------------------------------------------------------------------------
status=0
[[ $exec_rc != 0 ]] && status=2
[[ $bench_rc != 0 ]] && status=2
[[ $tests_rc != 0 ]] && status=1
SUMMARY="$OUT_DIR/${TAG}.json"
"$PY" - "$SUMMARY" "$backend" "$tests_rc" "$bench_rc" "$bench_cut" "$used_venv" "$(elapsed)" \
  "$status" "$BENCH_JSON" "${skipped[@]}" <<'EOF'
import json
import os
import platform
import sys

import jax

path, backend, tests_rc, bench_rc, cut, venv, wall, status, bench, *skipped = sys.argv[1:]
summary = {
    "backend": backend,
    "devices": [f"{d.platform}:{d.device_kind}" for d in jax.local_devices()],
    "jax_version": jax.__version__,
    "python": sys.executable,
    "fresh_venv": venv == "1",
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "tests_exit": int(tests_rc),
    "benchmark_exit": int(bench_rc),
    "benchmark_cut_by_budget": cut == "1",
    "benchmark_json": bench,
    "skipped_gpu_only_rows": skipped,
    "wall_s": int(wall),
    "exit_status": int(status),
}
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF
say "device check: exit $status after $(elapsed) s (backend $backend); JSON in $OUT_DIR"
exit $status
