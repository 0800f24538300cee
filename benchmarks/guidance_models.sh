#!/usr/bin/env bash
# Trains every model that benchmarks/guidance_sweep.py measures, into
# runs/guidance/ (or $1); a second argument adds a config variant to every
# run (`quick`: seconds each, to try the scripts). Each is a committed config run by the CLI; a
# finished workdir resumes at its last step and does no more training, so
# the script can be re-run after an interruption.
#
#   bash benchmarks/guidance_models.sh            # ~1 hour on an idle 2-core CPU
#   bash benchmarks/guidance_models.sh /tmp/guidance_quick quick
#   python benchmarks/guidance_sweep.py --out=benchmarks/results/guidance_cpu.json
set -euo pipefail
root="${1:-runs/guidance}"
variant="${2:-}"
python="${PYTHON:-python}"
train() {  # workdir config [overrides...]
  local workdir="$root/$1" config="$2"; shift 2
  if [ -n "$variant" ]; then
    if [[ "$config" == *:* ]]; then config="$config,$variant"; else config="$config:$variant"; fi
  fi
  echo "== $workdir ($config $*)"
  "$python" -m diffusion_jax.main --mode=train --config="$config" --workdir="$workdir" "$@"
}
# Shapes: conditional (the main job), unconditional, the noisy classifier.
train shapes configs/shapes_class_cond.py
train shapes_uncond configs/shapes_class_cond.py:uncond
train shapes_classifier configs/shapes_classifier.py
# The data filter: unconditional models without class 0 (red circle), once
# by the label and once by what the noisy classifier predicts at t = 0.
train shapes_uncond_drop_by_label configs/shapes_class_cond.py:uncond \
  --config.data.filter.drop.label="(0,)"
train shapes_uncond_drop_by_classifier configs/shapes_class_cond.py:uncond \
  --config.data.filter.classifier_workdir="$root/shapes_classifier" \
  --config.data.filter.classifier_drop_labels="(0,)"
# Digits: the noisy classifier, unconditional, conditional (the diffusion
# models at half their configs' 2,000 steps, to fit the measurement in a
# session's time on a 2-core CPU).
train digits_classifier configs/digits_classifier.py
train digits_uncond configs/digits_class_cond.py:uncond --config.train.num_steps=1000
train digits configs/digits_class_cond.py --config.train.num_steps=1000
