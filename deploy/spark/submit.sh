#!/usr/bin/env bash
# Submit a blocklin driver script to Spark with spark-submit, shipping blocklin as a wheel.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: submit.sh [options] DRIVER.py [driver args...]

Submit a Python driver that calls blocklin (e.g. bl.compute(..., executor="spark",
spark=SparkSession.builder.getOrCreate())) with spark-submit. blocklin itself is
built into a wheel and shipped with --py-files (it is pure Python); its dependencies
(numpy, zarr, numcodecs, crc32c, fsspec, threadpoolctl, ...) must be installed in the
executors' Python, or shipped as a packed environment with --archive.

options:
  --master URL        Spark master (default: $SPARK_MASTER or local[*])
  --wheel PATH        use this blocklin wheel instead of building one
  --archive TAR.GZ    a packed Python environment (venv-pack / conda-pack); executors
                      run its bin/python (shipped as --archives TAR.GZ#blenv)
  --conf-file PATH    Spark properties file (default: spark-defaults.conf beside this script)
  --spark-submit PATH spark-submit to use (default: $SPARK_HOME/bin/spark-submit,
                      else the one on PATH)
  --dry-run           print the spark-submit command instead of running it
  -h, --help          show this help
Anything after the driver script is passed to it.
USAGE
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
master="${SPARK_MASTER:-local[*]}"
wheel=""
archive=""
conf_file="$here/spark-defaults.conf"
submit=""
dry_run=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --master) master="${2:?--master needs a URL}"; shift 2 ;;
    --wheel) wheel="${2:?--wheel needs a path}"; shift 2 ;;
    --archive) archive="${2:?--archive needs a path}"; shift 2 ;;
    --conf-file) conf_file="${2:?--conf-file needs a path}"; shift 2 ;;
    --spark-submit) submit="${2:?--spark-submit needs a path}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -*) echo "submit.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done

if [[ $# -lt 1 ]]; then
  echo "submit.sh: missing the driver script" >&2; usage >&2; exit 2
fi
driver="$1"; shift
if [[ ! -f "$driver" ]]; then
  echo "submit.sh: no driver script at $driver" >&2; exit 2
fi
if [[ ! -f "$conf_file" ]]; then
  echo "submit.sh: no properties file at $conf_file" >&2; exit 2
fi

if [[ -z "$submit" ]]; then
  if [[ -n "${SPARK_HOME:-}" && -x "$SPARK_HOME/bin/spark-submit" ]]; then
    submit="$SPARK_HOME/bin/spark-submit"
  else
    submit="spark-submit"
  fi
fi

python="${PYTHON:-python3}"
if [[ -z "$wheel" ]]; then
  # Build the wheel from this checkout (pure Python: no compiler needed).
  dist="$root/dist"
  if [[ $dry_run -eq 1 ]]; then
    wheel="$dist/blocklin-<version>-py3-none-any.whl"
  else
    "$python" -m pip wheel --quiet --no-deps -w "$dist" "$root" >&2
    wheel="$(ls -t "$dist"/blocklin-*.whl | head -n 1)"
  fi
fi

cmd=("$submit" --master "$master" --properties-file "$conf_file" --py-files "$wheel")
if [[ -n "$archive" ]]; then
  cmd+=(--archives "$archive#blenv"
        --conf spark.pyspark.python=./blenv/bin/python
        --conf spark.executorEnv.PYSPARK_PYTHON=./blenv/bin/python)
fi
cmd+=("$driver" "$@")

if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
