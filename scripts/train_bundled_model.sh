#!/usr/bin/env bash
# Retrain the bundled model toy-icl exactly as shipped (three stages, about 55 minutes on one CPU
# thread; see docs/toy_model.md), then install it into the package. Every stage saves weights at
# each evaluation, so a stopped run can be resumed with --init-from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# 1. categorization only, written `x y`: `number` alone for 2500 steps, then all three
$PY -m icl_circuits.toy.train --out runs/stage/toy_s0_5000 --steps 5000 --decay-fraction 0.0 --curriculum-steps 5000 \
  --eval-every 250 --bridge-example '{x} {y}' --bridge-steps 5000 --early-tasks number --early-task-steps 2500
# 2. the three categorization tasks, still `x y`
$PY -m icl_circuits.toy.train --out runs/stage/toy_s0_b3250 --steps 3250 --decay-fraction 0.0 --curriculum-steps 3250 \
  --eval-every 250 --init-from runs/stage/toy_s0_5000 --example '{x} {y}' --tasks letter-string,number,point
# 3. every task in the template's own `x:y`, categorization alone for the first 500 steps
$PY -m icl_circuits.toy.train --out runs/stage/toy_s0_final --steps 4500 --curriculum-steps 500 --eval-every 250 \
  --init-from runs/stage/toy_s0_b3250
cp runs/stage/toy_s0_final/{model.safetensors,config.json,training.json} icl_circuits/toy/weights/
$PY scripts/toy_model_card.py
