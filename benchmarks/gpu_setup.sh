# Sourced by the scripts for a GPU lent for a few minutes (gpu_session.sh, gpu_speed.sh): into
# the project's root, maml-cli and Hydra installed from the tree and .whl where the machine's
# Python (which has torch) lacks them, the data in .data.
#
# Prepared on the CPU machine (.data and .whl are ignored by git; carry both):
#   mkdir -p .data && cp -r ../shared/data/omniglot .data/
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 higher==0.2.1
#   python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit
OUT=${OUT:-outputs/gpu_session}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if ! python3 -c "import maml_cli, hydra" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || exit
    python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit
fi
export MAML_DATA_ROOT=$PWD/.data PYTHONUNBUFFERED=1
