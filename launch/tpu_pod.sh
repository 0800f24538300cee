#!/usr/bin/env bash
# Runs diffusion_jax.main on every worker of a Cloud TPU VM pod slice.
# jax.distributed.initialize() finds the pod's coordinator itself
# (DIFFUSION_JAX_DISTRIBUTED=auto). The repository must be at REPO_DIR on
# every worker (e.g. cloned by the first command below).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh \
#     --mode=train --config=configs/shapes_class_cond.py:64 --workdir=gs://bucket/shapes64
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-~/diffusion_jax}"
REPO_URL="${REPO_URL:-}"
args=$(printf '%q ' "$@")
setup="cd $REPO_DIR && python3 -m pip install -q -e . 'jax[tpu]'"
if [ -n "$REPO_URL" ]; then
  setup="(test -d $REPO_DIR || git clone $REPO_URL $REPO_DIR) && $setup"
fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "$setup && DIFFUSION_JAX_DISTRIBUTED=auto python3 -m diffusion_jax.main $args"
