#!/bin/sh
# The image's ENTRYPOINT: set up CUDA forward compatibility (cuda-compat.sh), then hand PID 1 to koe-container,
# which receives SageMaker's SIGTERM itself. `docker run IMAGE serve` -> `koe-container serve`.
set -e
. "$(dirname "$0")/cuda-compat.sh"
cuda_compat_setup
exec koe-container "$@"
