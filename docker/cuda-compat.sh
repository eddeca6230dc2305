# CUDA forward compatibility for koe's image (sourced by entrypoint.sh; tests source it too).
#
# The image is built on CUDA 12.8. SageMaker's GPU hosts may run an older driver (al2-ami-sagemaker-inference-
# gpu-3-1: 550, CUDA 12.4), and the NVIDIA Container Toolkit >= 1.17.4 (and the "-1" AMIs) no longer mount the
# CUDA compat libraries for us. AWS's own CUDA 12.8 containers therefore put /usr/local/cuda/compat first on
# the library path when, and only when, the host driver is older than the driver those libraries come from
# (https://docs.aws.amazon.com/sagemaker/latest/dg/inference-gpu-drivers.html). With a newer host driver the
# compat libraries must NOT be used (they would shadow the newer libcuda).

# cuda_compat_needed HOST_DRIVER COMPAT_DRIVER: exit 0 when HOST_DRIVER is known and older than COMPAT_DRIVER.
cuda_compat_needed() {
    [ -n "$1" ] && [ -n "$2" ] && [ "$1" != "$2" ] \
        && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]
}

# The driver the compat libraries come from: libcuda.so.1 -> libcuda.so.570.124.06 gives 570.124.06.
cuda_compat_driver() {
    target=$(readlink "${KOE_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}/libcuda.so.1" 2>/dev/null) || return 0
    printf '%s\n' "${target##*/}" | cut -d. -f3-
}

# The host's kernel-module driver version ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.163.01 ...");
# empty without a GPU.
host_driver() {
    sed -n 's/^NVRM.*Kernel Module *\([0-9.]*\).*$/\1/p' "${KOE_NVIDIA_VERSION_FILE:-/proc/driver/nvidia/version}" \
        2>/dev/null || true
}

# cuda_compat_setup: prepend the compat folder to LD_LIBRARY_PATH when the host driver needs it.
cuda_compat_setup() {
    compat_dir=${KOE_CUDA_COMPAT_DIR:-/usr/local/cuda/compat}
    host=$(host_driver)
    compat=$(cuda_compat_driver)
    if cuda_compat_needed "$host" "$compat"; then
        export LD_LIBRARY_PATH="$compat_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "koe: host NVIDIA driver $host is older than $compat: using the CUDA compat libraries in $compat_dir" >&2
    elif [ -n "$host" ]; then
        echo "koe: host NVIDIA driver $host${compat:+ (compat libraries: $compat)}: no CUDA compat needed" >&2
    fi
}
