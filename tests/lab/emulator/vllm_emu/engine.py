"""What the emulated engine does with GPUs: find them through NVML, plan memory the way vLLM does, fail the way
vLLM fails when the plan does not fit, and hold the memory in worker processes while it serves."""

import collections
import ctypes
import os
import signal
import sys
import time

sys.path.insert(0, "/usr/lib/inferops-lab")  # mounted by the lab's GPU runtime hook, like the driver's libraries

GIB = 1024 ** 3
MIB = 1024 ** 2

BYTES_PER_PARAM = {"awq": 0.5, "gptq": 0.5, "awq_marlin": 0.5, "gptq_marlin": 0.5, "bitsandbytes": 0.5,
                   "mxfp4": 0.5, "fp8": 1.0, "modelopt": 1.0, "float32": 4.0, "float": 4.0}
ACTIVATION_RESERVE = 1.5 * GIB


Plan = collections.namedtuple("Plan", "memory_mib weights kv_tokens kv_bytes max_len gpus")


class StartupError(Exception):
    """A failure during start-up: the log lines to print (vLLM's own words) and the exit code."""

    def __init__(self, lines, code=1):
        super().__init__(lines[-1])
        self.lines = lines
        self.code = code


def oom_traceback(gpu, tried_bytes, total_bytes, free_bytes):
    return [
        "Traceback (most recent call last):",
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_model_runner.py", line 2613, '
        "in load_model",
        "    self.model = model_loader.load_model(",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate %.2f GiB. GPU %d has a total capacity of "
        "%.2f GiB of which %.2f GiB is free. Including non-PyTorch memory, this process has %.2f GiB memory in use. "
        "Of the allocated memory %.2f GiB is allocated by PyTorch, and 0.00 GiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)" % (
            tried_bytes / GIB, gpu, total_bytes / GIB, free_bytes / GIB, (total_bytes - free_bytes) / GIB,
            (total_bytes - free_bytes) / GIB),
    ]


def visible_gpus():
    """The GPUs this process may use, as CUDA would number them: NVML's devices filtered by CUDA_VISIBLE_DEVICES."""
    try:
        import labgpu
    except ImportError:
        raise StartupError(["RuntimeError: No CUDA GPUs are available"])
    try:
        nvml = labgpu.Nvml()
    except labgpu.NvmlError as exc:
        if exc.code == labgpu.NVML_ERROR_DRIVER_NOT_LOADED:
            raise StartupError(["RuntimeError: Found no NVIDIA driver on your system. Please check that you have "
                                "an NVIDIA GPU and installed a driver from http://www.nvidia.com/Download/index.aspx"])
        raise StartupError(["RuntimeError: No CUDA GPUs are available"])
    try:
        devices = nvml.devices()
    finally:
        nvml.close()
    wanted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is not None:
        chosen = []
        for ref in [r.strip() for r in wanted.split(",") if r.strip()]:
            chosen += [d for d in devices if ref in (str(d["index"]), d["uuid"])]
        devices = chosen
    if not devices:
        raise StartupError(["RuntimeError: No CUDA GPUs are available"])
    return devices


def plan(args, devices, faults, params, max_len):
    """vLLM's start-up memory checks. Returns a Plan: memory held per GPU, weights, KV cache, max model len."""
    world = args.tensor_parallel_size * args.pipeline_parallel_size
    if world > len(devices):
        raise StartupError([
            "ValueError: World size (%d) is larger than the number of available GPUs (%d) in this node. If this is "
            "intentional and you are using Ray, please use ray start to set up the cluster." % (world, len(devices))])
    gpus = devices[:world]
    util = args.gpu_memory_utilization
    for rank, gpu in enumerate(gpus):
        total, free = gpu["memory_total"] * MIB, gpu["memory_free"] * MIB
        if free < util * total:
            raise StartupError([
                "ValueError: Free memory on device cuda:%d (%.2f/%.2f GiB) on startup is less than desired GPU "
                "memory utilization (%s, %.2f GiB). Decrease GPU memory utilization or reduce GPU memory used by "
                "other processes." % (rank, free / GIB, total / GIB, util, util * total / GIB)])

    budget = util * gpus[0]["memory_total"] * MIB
    bytes_per_param = BYTES_PER_PARAM.get(args.quantization or args.dtype, 2.0)
    weights = params * bytes_per_param / world
    if weights + ACTIVATION_RESERVE > budget or _oom_forced(args, faults):
        gpu = gpus[0]
        raise StartupError(oom_traceback(0, min(weights, 2 * GIB), gpu["memory_total"] * MIB,
                                         max(budget - weights, 0.3 * GIB) if weights < budget else 0.4 * GIB))

    kv_bytes_per_token = 131072 * (params / 8e9) ** 0.5 / args.tensor_parallel_size
    if args.kv_cache_dtype.startswith("fp8"):
        kv_bytes_per_token /= 2
    kv_tokens = int((budget - weights - ACTIVATION_RESERVE) / kv_bytes_per_token)
    if max_len > kv_tokens:
        raise StartupError([
            "ValueError: To serve at least one request with the models's max seq len (%d), (%.2f GiB KV cache is "
            "needed, which is larger than the available KV cache memory (%.2f GiB). Based on the available memory, "
            "the estimated maximum model length is %d. Try increasing `gpu_memory_utilization` or decreasing "
            "`max_model_len` when initializing the engine." % (
                max_len, max_len * kv_bytes_per_token / GIB, (budget - weights - ACTIVATION_RESERVE) / GIB,
                kv_tokens)])
    return Plan(memory_mib=int(util * gpus[0]["memory_total"]), weights=weights, kv_tokens=kv_tokens,
                kv_bytes=budget - weights - ACTIVATION_RESERVE, max_len=max_len, gpus=gpus)


def default_max_num_seqs(gpu):
    """vLLM 0.33's default for the API server: 1024 on GPUs of 70 GiB or more (but not A100s), else 256."""
    memory = gpu["memory_total"] * MIB
    if memory >= 160 * GIB or (memory >= 70 * GIB and "a100" not in gpu.get("name", "").lower()):
        return 1024
    return 256


def _oom_forced(args, faults):
    if faults.get("oom") == "startup":
        return True
    limits = faults.get("oom_above") or {}
    return any(getattr(args, key, None) is not None and getattr(args, key) > limit for key, limit in limits.items())


def _set_process_name(name):
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def start_workers(gpus, memory_mib, faults, instance):
    """Forks one worker per GPU rank; each holds its GPU memory until it exits. Returns their PIDs.

    A worker exits when the API server is gone, unless the orphan_workers fault says it does not notice."""
    import labgpu

    orphan = bool(faults.get("orphan_workers"))
    parent = os.getpid()
    pids = []
    for rank, gpu in enumerate(gpus):
        pid = os.fork()
        if pid:
            pids.append(pid)
            continue
        try:
            _set_process_name("VLLM::Worker_TP%d" % rank)
            if orphan:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGTERM, lambda *_: (labgpu.drop_claim(), os._exit(0)))
            labgpu.write_claim({gpu["uuid"]: memory_mib}, utilization=5, name="VLLM::Worker_TP%d" % rank,
                               owner=instance)
            while orphan or os.getppid() == parent:
                time.sleep(0.2)
            labgpu.drop_claim()
        except Exception:  # pylint: disable=broad-except
            # What a dying vLLM worker prints: the cause, before the engine reports the worker's death.
            import traceback

            sys.stderr.write("(VllmWorker TP%d pid=%d) ERROR %s\n" % (rank, os.getpid(), traceback.format_exc()))
            sys.stderr.flush()
            os._exit(1)
        finally:
            os._exit(0)
    return pids
