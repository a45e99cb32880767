#!/usr/bin/env bash
# Build the separate venv the real diffusers example runs in, for `train_step.py --example`.
#
#   benchmarks/example_setup.sh DIFFUSERS_CHECKOUT [VENV]
#
# DIFFUSERS_CHECKOUT: a clone of github.com/huggingface/diffusers (its
# examples/text_to_image/train_text_to_image_lora.py is copied, unmodified, to VENV/examples/).
# VENV defaults to .venv-example (gitignored). The shared libraries get the versions in
# requirements.lock, so the example and lorastudio run the same torch / diffusers / peft; the
# example's own requirements (datasets, ftfy, tensorboard, torchvision) come on top.
# torchvision goes in with --no-deps: its wheel pins torch==2.13.0, which a CPU torch
# (2.13.0+cpu) satisfies, and without --no-deps an index may offer a CUDA torch instead.
# That wheel's compiled ops cannot load beside a CPU torch; benchmarks/example_timer.py deals
# with that at import, outside the example.
set -euo pipefail
src=${1:?usage: example_setup.sh DIFFUSERS_CHECKOUT [VENV]}
venv=${2:-.venv-example}
root=$(cd "$(dirname "$0")/.." && pwd)
example=$src/examples/text_to_image/train_text_to_image_lora.py
[ -f "$example" ] || { echo "$example: not found (pass a diffusers checkout)" >&2; exit 2; }
pin() { grep -i -E "^$1==" "$root/requirements.lock" || echo "$1"; }
python3.11 -m venv "$venv"
# the example's requirements, torchvision left out (it is installed alone below)
grep -v -i '^torchvision' "$src/examples/text_to_image/requirements.txt" > "$venv/example-requirements.txt"
"$venv/bin/pip" install -q -c "$root/requirements.lock" \
    "$(pin torch)" "$(pin diffusers)" "$(pin transformers)" "$(pin accelerate)" "$(pin peft)" \
    -r "$venv/example-requirements.txt"
torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
# torchvision minor = torch minor + 15 (torch 2.13 <-> torchvision 0.28)
tv_minor=$(( $(echo "$torch_version" | cut -d. -f2) + 15 ))
"$venv/bin/pip" install -q --no-deps "torchvision==0.$tv_minor.*"
mkdir -p "$venv/examples"
cp "$example" "$venv/examples/"
(cd "$src" && git rev-parse HEAD 2>/dev/null || echo unknown) > "$venv/examples/DIFFUSERS_COMMIT"
echo "ready: $venv/bin/python benchmarks/example_timer.py $venv/examples/train_text_to_image_lora.py ..."
