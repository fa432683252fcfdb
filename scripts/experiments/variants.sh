# Sourced by the probe scripts (velocity2d.sh, dice_gap32.sh): train one bch model per variant
# with the CLI, predict the test images whole and write evaluate's JSON.
#   run_variants DATA RESULTS WORK "COMMON TRAIN FLAGS" "NAME:FLAGS" ...
# DATA holds imagesTr/labelsTr/imagesTs/labelsTs; a variant whose RESULTS/NAME.json exists is
# skipped, so an interrupted probe resumes. Uses $PYTHON.
run_variants() {
  local data=$1 results=$2 work=$3 common=$4 variant name
  shift 4
  local -a base flags
  read -r -a base <<< "$common"
  for variant in "$@"; do
    name=${variant%%:*}
    read -r -a flags <<< "${variant#*:}"
    [ -f "$results/$name.json" ] && continue
    "$PYTHON" -m napari_difftt.cli train --images "$data/imagesTr" --labels "$data/labelsTr" \
      --model bch --prior diag --lr 1e-3 --seed 0 --device cpu --threads 1 \
      --out "$work/$name.pt" --overwrite --quiet "${base[@]}" "${flags[@]}"
    "$PYTHON" -m napari_difftt.cli predict --checkpoint "$work/$name.pt" "$data/imagesTs" \
      --out "$work/pred_$name" --jacobian --device cpu --overwrite --quiet
    "$PYTHON" -m napari_difftt.cli evaluate --pred "$work/pred_$name" --labels "$data/labelsTs" \
      --json "$results/$name.json" --overwrite
  done
}
