# Sourced by the tools/device/run_*.sh scripts: the environment of a run on the GPU machine.
# Sets PY, PYTHONPATH (the checkout, then wheels from .whl/ when the image lacks structlog),
# PYTHONUNBUFFERED and a kernel cache outside the checkout.
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/streamdag-cache}
# `import streamdag` pulls the trainer's dependencies (structlog), which the image lacks;
# wheels carried in .whl/ (../shared/device/prep-wheels.sh) fill the gap on a bare machine.
if ! $PY -c "import structlog" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
