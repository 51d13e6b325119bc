#!/bin/bash
# The release check of issue 21: build the wheel, install it (not editable) into a fresh venv
# outside the repository, segment one raw Lesjak exam with no model given (the shipped one) and
# check that an exam with T1W alone is refused.
#   launch/check_wheel.sh [DATA=../shared/data] [TMP=/tmp/msjax_wheelcheck]
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(cd "${1:-$REPO/../shared/data}" && pwd)
T=${2:-/tmp/msjax_wheelcheck}
rm -rf "$T"; mkdir -p "$T/wheel" "$T/exams/p01study2" "$T/exams_t1/t1only"
python3 -m pip wheel --no-deps -q -w "$T/wheel" "$REPO"
W=$(ls "$T"/wheel/msjax-*.whl)
echo "wheel: $W ($(du -h "$W" | cut -f1))"
python3 -m venv "$T/venv"
"$T/venv/bin/pip" install -q "$W[preprocess]"
R="$DATA/lesjak_longitudinal_raw/patient01"
for f in FLAIR T1W T2W; do cp "$R/study2_$f.nii.gz" "$T/exams/p01study2/$f.nii.gz"; done
for f in T1W T2W; do
  cp "$R/study2_${f}_intrastudy_to_FLAIR.txt" "$T/exams/p01study2/${f}_intrastudy_to_FLAIR.txt"
done
cp "$R/study1_T1W.nii.gz" "$T/exams_t1/t1only/T1W.nii.gz"
cd "$T"  # outside the repository: the installed package, not the source tree
venv/bin/msjax --config=segment --config.input="$T/exams" --workdir "$T/out" > seg.log 2>&1
grep -q "using the shipped model msjax-lesjak" seg.log
test -s "$T/out/sub-p01study2/anat/sub-p01study2_space-orig_desc-lesion_mask.nii.gz"
tail -1 seg.log
if venv/bin/msjax --config=segment --config.input="$T/exams_t1" --workdir "$T/out_t1" > t1.log 2>&1; then
  echo "FAILED: the T1W-only exam was not refused"; exit 1
fi
grep -q "t1only has T1W; the model takes" t1.log
echo "wheel check passed: shipped model used, mask written, T1W-only exam refused"
