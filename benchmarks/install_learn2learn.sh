#!/usr/bin/env bash
# learn2learn, a baseline of benchmarks/bench.py, into the Python environment of $PYTHON
# (default: python), from its PyPI release.
#
# Its last release (0.2.0, 2023) has no wheels, and its source ships C files that an old Cython
# generated and that no longer compile on Python 3.11 (they include longintrepr.h, which moved),
# so this regenerates them from its .pyx sources with Cython 3 before building. Its setup.py
# would also install its own test suite as a top-level package `tests`, which shadows ours:
# only the learn2learn package is built. Of its dependencies, `import learn2learn` needs gym and
# requests besides what maml-cli has; the rest (gsutil's large tree, qpth) serve datasets and
# models the benchmark does not use, so the package itself goes in with --no-deps.
set -euo pipefail
python=${PYTHON:-python}
version=0.2.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps --no-binary :all: "learn2learn==$version" -d "$work"
tar xzf "$work/learn2learn-$version.tar.gz" -C "$work"
"$python" -m pip install -q --target "$work/cython" "cython>=3,<3.1"
PYTHONPATH="$work/cython" "$python" -m cython -3 \
    "$work/learn2learn-$version"/learn2learn/data/*.pyx
sed -i 's/packages=find_packages()/packages=find_packages(include=["learn2learn*"])/' \
    "$work/learn2learn-$version/setup.py"
grep -q 'include=\["learn2learn\*"\]' "$work/learn2learn-$version/setup.py"
"$python" -m pip install -q "gym==0.26.2" requests
"$python" -m pip install -q --no-deps "$work/learn2learn-$version"
"$python" -c "import learn2learn; print('learn2learn', learn2learn.__version__, 'installed')" \
    2>/dev/null
