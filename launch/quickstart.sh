#!/usr/bin/env bash
# The two Quickstart commands of README.md. Each sets up (or reuses) a virtual
# environment in .venv with this package installed, then runs:
#
#   bash launch/quickstart.sh main   # the main job: train on shapes, write a sample grid
#   bash launch/quickstart.sh test   # the test suite on the CPU backend
#   bash launch/quickstart.sh toy    # the exact-denoiser demo (2-D mixture, seconds)
#   bash launch/quickstart.sh docs   # the manual, HTML in docs/_build/html (every warning an error)
#
# Needs only python3 >= 3.10 with venv; set PYTHON to use another interpreter,
# DIFFUSION_JAX_VENV to put the environment elsewhere, and DIFFUSION_JAX_EXTRAS
# to install more extras than "test" (CI: "test,convert", PyTorch for the
# converter's tests; without it those tests skip).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DIFFUSION_JAX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="${DIFFUSION_JAX_EXTRAS:-test}"

die() { echo "quickstart: $*" >&2; exit 2; }

ensure_env() {
  command -v "$python" >/dev/null || die "$python not found; install Python >= 3.10"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$python is $("$python" -V 2>&1); diffusion_jax needs Python >= 3.10"
  if [ ! -x "$venv/bin/python" ]; then
    echo "quickstart: creating a virtual environment in $venv"
    "$python" -m venv "$venv" || die "could not create $venv (on Debian/Ubuntu: apt install python3-venv)"
  fi
  # Reinstall only when setup.py or the extras changed since the last install.
  local stamp="$venv/.diffusion_jax-$( (cat "$root/setup.py"; echo "$extras") | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "quickstart: installing diffusion_jax and its dependencies (once; a few minutes)"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$root[$extras]"
    rm -f "$venv"/.diffusion_jax-*
    touch "$stamp"
  fi
}

. "$root/launch/tcmalloc.sh"

cd "$root"
case "${1:-}" in
  main)
    shift
    ensure_env
    preload_tcmalloc
    exec "$venv/bin/python" -m diffusion_jax.main --mode=train \
      --config=configs/shapes_class_cond.py --workdir=runs/shapes "$@"
    ;;
  toy)
    shift
    ensure_env
    exec "$venv/bin/python" -m diffusion_jax.main --mode=toy \
      --config=configs/toy_mixture.py --workdir=runs/toy "$@"
    ;;
  test)
    shift
    ensure_env
    exec "$venv/bin/python" -m pytest -q "$@"
    ;;
  docs)
    shift
    case ",$extras," in *,docs,*) ;; *) extras="$extras,docs" ;; esac
    ensure_env
    # The source is the repository root (docs/conf.py says why); -W: a broken
    # link, a missing image or a docstring that does not parse fails the build.
    JAX_PLATFORMS=cpu exec "$venv/bin/python" -m sphinx -W --keep-going -q -c docs . \
      docs/_build/html "$@"
    ;;
  *)
    die "usage: bash launch/quickstart.sh {main|test|toy|docs} [extra arguments]"
    ;;
esac
