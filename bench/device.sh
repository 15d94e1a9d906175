#!/usr/bin/env bash
# The one script to run the benchmarks on a lent accelerator machine (no network there), from the source tree.
#
#   bench/device.sh download DIR        here, with PyPI: fetch the wheels below (cp312 manylinux x86_64 / pure) into DIR
#   bench/device.sh check [DIR]         validate the wheel list; with DIR: one wheel per spec there, and a trial
#                                       install of DIR's wheels into a temporary folder (nothing downloaded)
#   bench/device.sh install DIR TARGET  install DIR's wheels, except those already installed at that version, into TARGET
#   bench/device.sh carry [DIR]         what travels to the device: the working tree plus DIR's wheels (default .whl),
#                                       against the 64 MiB limit (exit status 1 when over)
#   bench/device.sh run [ARGS...]       on the device: install ./.whl into ./.devdeps, PYTHONPATH=.:.devdeps,
#                                       python3 bench/all.py --results-dir $OUT ARGS (the table and JSON are written
#                                       there after every job, so a run cut short still returns what it measured)
#                                       ($WHL and $DEVDEPS name other folders, $PYTHON another interpreter)
#   bench/device.sh list | provided     print the wheel specs / the setup.cfg requirements the device image provides
#
# The device image has Python 3.12, jax 0.11, flax, optax, orbax-checkpoint, chex, torch 2.11 and transformers 5.x
# (which has no Flax CLIP): what ffclip_jax needs beyond it travels as wheels (carry=[".whl"], under 64 MiB).
set -euo pipefail

# The ONE list of wheels carried to the device: name==version, cp312 manylinux x86_64 or py3-none-any.
# transformers 4.x (Flax CLIP) with the huggingface_hub and tokenizers it accepts; ml_collections (configs);
# the data/text/logging stack of setup.cfg with the dependencies the image lacks.
WHEELS=(
    transformers==4.57.6
    huggingface_hub==0.36.2
    tokenizers==0.22.2
    ml_collections==1.1.0
    ftfy==6.3.1
    wcwidth==0.9.4
    tensorboardX==2.6.5
    tensorflow-datasets==4.9.10
    array_record==0.8.6
    grain==0.2.18
    dm-tree==0.1.10
    immutabledict==4.3.1
    simple-parsing==0.1.9
    docstring-parser==0.18.0
    termcolor==3.3.0
    toml==0.10.2
    tensorflow-metadata==1.21.0
    googleapis-common-protos==1.76.0
    portpicker==1.6.0
    promise==2.3
)
# Published only as a source archive: built into a pure-Python wheel by `download` (pip wheel --no-deps).
SDIST_ONLY=(promise)
# setup.cfg install_requires that the device image already holds (KINDS.md's package list): not carried.
PROVIDED=(jax flax optax orbax-checkpoint chex numpy scipy pillow tqdm regex matplotlib absl-py etils protobuf psutil
          pyarrow wrapt six attrs packaging pyyaml requests filelock safetensors fsspec hf-xet typing-extensions
          cloudpickle msgpack)

CARRY_LIMIT_MIB=64  # the device tool's limit on the working tree that travels, carried folders included

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "device.sh: $*" >&2; exit 1; }

norm() { echo "$1" | tr 'A-Z' 'a-z' | sed 's/[-_.]\+/_/g'; }  # PEP 503-ish: compare names as wheel files spell them

validate() {
    local seen=" " s name
    for s in "${WHEELS[@]}"; do
        [[ $s =~ ^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+-]*$ ]] || die "bad spec '$s' (want name==version)"
        name=$(norm "${s%%==*}")
        [[ $seen == *" $name "* ]] && die "duplicate '$name' in WHEELS"
        seen+="$name "
    done
    echo "wheel list: ${#WHEELS[@]} specs ok"
}

# The device's interpreter and platforms: what `download` fetches for and what `check` trial-installs for.
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
               --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
               --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)

# install DIR TARGET [all [PIP ARGS...]]: the wheels in DIR whose distribution is not installed (for $PYTHON) at
# that version go into TARGET; with `all`, every wheel in DIR.
install_wheels() {
    local dir=$1 target=$2 every=${3:-} todo
    shift 3 || shift $#
    compgen -G "$dir/*.whl" >/dev/null || die "no wheels in $dir"
    todo=$(EVERY=$every "$PYTHON" - "$dir" <<'EOF'
import glob, importlib.metadata as md, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name, version = os.path.basename(path).split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have == version and not os.environ["EVERY"]:
        print(f"  have {name} {version}", file=sys.stderr)
    else:
        print(path)
EOF
)
    mkdir -p "$target"
    if [[ -n $todo ]]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --disable-pip-version-check --target "$target" "$@" $todo
        echo "installed $(echo "$todo" | wc -l) wheel(s) into $target"
    else
        echo "nothing to install into $target"
    fi
}

check_dir() {
    local dir=$1 s name n
    for s in "${WHEELS[@]}"; do
        name=$(norm "${s%%==*}")
        n=0
        for f in "$dir"/*.whl; do
            b=$(basename "$f")
            if [[ $(norm "${b%%-*}") == "$name" && ${b#*-} == "${s#*==}"-* ]]; then n=$((n + 1)); fi
        done
        [[ $n == 1 ]] || die "$s: $n matching wheels in $dir (want 1)"
    done
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    install_wheels "$dir" "$TMP/site" all "${PLATFORM_ARGS[@]}"  # a trial install of every wheel, for the device
    echo "trial install of $dir ok"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# carry DIR: the wheels' and the working tree's bytes (tracked and untracked-not-ignored files: what the device tool
# sends) against CARRY_LIMIT_MIB.
carry() {
    local dir=$1 n=0 wheels=0 tree f
    for f in "$dir"/*.whl; do
        [[ -f $f ]] || continue
        n=$((n + 1)); wheels=$((wheels + $(stat -c %s "$f")))
    done
    tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
           xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    local total=$((wheels + tree)) limit=$((CARRY_LIMIT_MIB * 1048576))
    echo "$n wheels, $(mib $wheels) in $dir; working tree $(mib "$tree"); together $(mib $total) of" \
         "$CARRY_LIMIT_MIB MiB ($(mib $((limit - total))) left)"
    [[ $total -le $limit ]] || die "over the ${CARRY_LIMIT_MIB} MiB carry limit"
}

cmd=${1:-}
shift || true
case $cmd in
list) printf '%s\n' "${WHEELS[@]}" ;;
provided) printf '%s\n' "${PROVIDED[@]}" ;;
download)
    [[ $# -ge 1 ]] || die "usage: device.sh download DIR"
    dir=$1; mkdir -p "$dir"; validate
    binary=(); sdist=()
    for s in "${WHEELS[@]}"; do
        if [[ " ${SDIST_ONLY[*]} " == *" ${s%%==*} "* ]]; then sdist+=("$s"); else binary+=("$s"); fi
    done
    "$PYTHON" -m pip download -q --disable-pip-version-check "${PLATFORM_ARGS[@]}" --no-deps -d "$dir" \
        "${binary[@]}"
    if [[ ${#sdist[@]} -gt 0 ]]; then
        "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dir" "${sdist[@]}"
    fi
    check_dir "$dir" >/dev/null 2>&1 || check_dir "$dir"
    carry "$dir"
    ;;
carry) carry "${1:-$ROOT/.whl}" ;;
check)
    validate
    if [[ $# -ge 1 ]]; then check_dir "$1"; fi
    ;;
install)
    [[ $# -ge 2 ]] || die "usage: device.sh install DIR TARGET"
    install_wheels "$1" "$2"
    ;;
run)
    cd "$ROOT"
    whl=${WHL:-.whl} devdeps=$(mkdir -p "${DEVDEPS:-.devdeps}" && cd "${DEVDEPS:-.devdeps}" && pwd)
    [[ -d $whl ]] || die "no $whl folder: run 'bench/device.sh download .whl' here and carry .whl"
    install_wheels "$whl" "$devdeps"
    export PYTHONPATH=$ROOT:$devdeps${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    exec "$PYTHON" bench/all.py --results-dir "${OUT:-$ROOT/bench/results}" "$@"
    ;;
*) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; [[ -z $cmd ]] || exit 2 ;;
esac
