#!/usr/bin/env bash
# On the GPU machine, from the repository root with bench/carry/ from bench/pack.sh:
# installs the Vulkan loader from the carried .deb, then runs the side-by-side benchmark.
# Extra arguments go to bench/side_by_side.py (e.g. --device cuda --sizes shakespeare).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=bench/carry
for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" /; done
ldconfig
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_DRIVER_FILES="$icd" && break
  done
fi
gunzip -c "$carry/simplegpt.gz" > /tmp/simplegpt && chmod +x /tmp/simplegpt
/tmp/simplegpt devices
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 bench/side_by_side.py --simplegpt /tmp/simplegpt --nanogpt "$carry/nanoGPT" \
  --data "$carry/input.txt" "$@"
if [ -f "$carry/simplegpt-fusion.gz" ]; then
  echo "== the same with burn's kernel fusion (--features fusion)"
  gunzip -c "$carry/simplegpt-fusion.gz" > /tmp/simplegpt-fusion && chmod +x /tmp/simplegpt-fusion
  python3 bench/side_by_side.py --simplegpt /tmp/simplegpt-fusion --nanogpt "$carry/nanoGPT" \
    --data "$carry/input.txt" "$@"
fi
