# Recommended XLA / libtpu / CUDA settings for training, sourced by launch/tpu_pod.sh and launch/gpu_slurm.sbatch.
#
# Sources: MaxText's v5p/v6e scripts and benchmarks/xla_flags_library.py, MaxDiffusion's Wan training recipe,
# JAX's docs/gpu_performance_tips.md, NVIDIA JAX-Toolbox docs/GPU_performance.md. An unknown flag aborts XLA at
# start-up ("Unknown flag"), and flags change between releases: tests/test_launch.py checks every flag below
# against the installed jaxlib (GPU flags) and libtpu (TPU flags), so a version bump that drops one fails there.
# Each launcher joins a list on ONE line (libtpu stops parsing at the first token that is not a flag) and puts
# the user's own LIBTPU_INIT_ARGS / XLA_FLAGS after ours, so a user setting wins. DREAMACTOR_PERF_FLAGS=0: none.
# shellcheck disable=SC2034  # the arrays are used by the scripts that source this file

# --- TPU (LIBTPU_INIT_ARGS), v5p / v6e ---
DREAMACTOR_TPU_FLAGS=(
  # Async collective fusion: FSDP's all-gathers run fused with the compute scheduled between start and done.
  --xla_tpu_enable_async_collective_fusion=true
  # ... including the all-gathers of the per-layer weights (the bulk of FSDP traffic).
  --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true
  # One collective may continue across several fusions, so a long all-gather hides behind more compute.
  --xla_tpu_enable_async_collective_fusion_multiple_steps=true
  # Overlap compute and communication on the same TensorCore.
  --xla_tpu_overlap_compute_collective_tc=true
  # Asynchronous all-gather (the fusion flags above pick how it is carried out).
  --xla_enable_async_all_gather=true
  # Keep all-gathers out of megacore fusions: fused ones cannot overlap (MaxText v5p, MaxDiffusion Wan).
  --xla_tpu_megacore_fusion_allow_ags=false
  # Async collective-permute: ring sequence parallelism (model.sequence_parallel='ring') passes K/V blocks so.
  --xla_enable_async_collective_permute=true
  # Overlap the data-parallel gradient all-reduce (across slices: over DCN) with the backward pass.
  --xla_tpu_enable_data_parallel_all_reduce_opt=true
  # ... also when the reduced gradients differ in size (they do: norms, biases and matrices).
  --xla_tpu_data_parallel_opt_different_sized_ops=true
)
# Host offload (model.remat='offload'): let the scheduler overlap the device<->host copies of the saved
# residuals with compute (MaxDiffusion's Wan recipe with HIDDEN_STATE_WITH_OFFLOAD).
DREAMACTOR_TPU_OFFLOAD_FLAGS=(
  # Track memory pressure while scheduling, so prefetches from host do not overflow HBM.
  --xla_tpu_enable_scheduler_memory_pressure_tracking=true
  # How many host transfers may be in flight at once, overlapping the layer compute.
  --xla_tpu_host_transfer_overlap_limit=24
  # Many concurrent host send/recv ops: one save and one fetch per layer of the scanned stack.
  --xla_max_concurrent_host_send_recv=100
)
# Multi-slice (DCN) runs: premapped host memory for the DCN transfers (Cloud TPU multi-slice recipes).
DREAMACTOR_TPU_MULTISLICE_FLAGS=(
  --megascale_grpc_premap_memory_bytes=17179869184
)

# --- GPU (XLA_FLAGS), H100 ---
DREAMACTOR_GPU_FLAGS=(
  # Overlap asynchronous collectives (FSDP all-gathers, reduce-scatters) with compute.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Pipeline FSDP's per-layer all-gather / reduce-scatter across the scan over layers (jaxlib 0.10 spelling;
  # newer XLA renames them --xla_gpu_pipeline_*=on).
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  # Double-buffer the scanned layer loop, so the next layer's collectives start during this one.
  --xla_gpu_enable_while_loop_double_buffering=true
  # Combine small collectives into NCCL calls of at least one layer's weights or gradients (JAX GPU tips).
  --xla_gpu_all_reduce_combine_threshold_bytes=1073741824
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
  # Combine whatever the dimension, for fewer, larger NCCL calls (MaxText A3 scripts).
  --xla_gpu_enable_all_gather_combine_by_dim=false
  --xla_gpu_enable_reduce_scatter_combine_by_dim=false
)
# Environment for GPU processes (exported as NAME=VALUE).
DREAMACTOR_GPU_ENV=(
  # One hardware queue per device: strict stream order, so the scheduler's overlap holds on Hopper (not Blackwell).
  CUDA_DEVICE_MAX_CONNECTIONS=1
  # JAX preallocates 75% of HBM by default; 90% leaves room for NCCL while giving the step 12 GB more on an H100.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.90
  # NCCL's protocols for all message sizes: LL/LL128 for the small latency-bound ones, SIMPLE for bulk.
  NCCL_PROTO=SIMPLE,LL,LL128
)

# The lists, joined for the environment: dreamactor_tpu_args [offload] [multislice]; dreamactor_gpu_flags.
dreamactor_tpu_args() {
  local out=("${DREAMACTOR_TPU_FLAGS[@]}") want
  for want in "$@"; do
    case "$want" in
      offload) out+=("${DREAMACTOR_TPU_OFFLOAD_FLAGS[@]}") ;;
      multislice) out+=("${DREAMACTOR_TPU_MULTISLICE_FLAGS[@]}") ;;
    esac
  done
  echo "${out[*]}"
}
dreamactor_gpu_flags() { echo "${DREAMACTOR_GPU_FLAGS[*]}"; }
# The persistent XLA compilation cache (train/compile_cache.py): on a shared directory, restarts after a
# preemption load the compiled step instead of recompiling it (minutes for the 14B step).
dreamactor_cache_dir() { local workdir="$1"; echo "${DREAMACTOR_COMPILATION_CACHE:-${workdir%/}/xla_cache}"; }
