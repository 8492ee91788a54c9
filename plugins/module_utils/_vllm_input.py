# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks on a vLLM instance's settings, shared by vllm_serve and the vllm role's first task: hostile or broken
values are refused before anything is read or touched."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.inferops.vllm.plugins.module_utils import _validate

# Texts that reach a unit file, an env file, a command line or a file path.
SINGLE_LINE = ("model", "served_model_name", "quantization", "dtype", "kv_cache_dtype", "download_dir", "hf_cache",
               "host", "publish_address", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs", "vllm_version",
               "log_max_size", "service_user", "venv_path", "config_dir", "log_dir", "watchdog_hold_dir")
# (option, minimum, maximum, above the minimum)
NUMBERS = (("gpu_memory_utilization", 0, 1, True), ("tensor_parallel_size", 1, None, False),
           ("pipeline_parallel_size", 1, None, False), ("max_model_len", 1, None, False),
           ("max_num_seqs", 1, None, False), ("max_num_batched_tokens", 1, None, False),
           ("shm_size_mib", 1, None, False), ("health_start_period", 0, None, False),
           ("stop_timeout", 0, None, False), ("shutdown_timeout", 0, None, False), ("watchdog_hold", 0, 86400, False))


def check(params, prefix=""):
    """Raises _validate.InputError naming the first bad field (after `prefix`). The name comes first: it becomes
    paths that state=absent deletes. Options that are not set (None or missing) pass."""
    def field(name):
        return prefix + name

    _validate.instance_name(field("name"), params.get("name"))
    for name in SINGLE_LINE:
        _validate.single_line(field(name), params.get(name))
    if params.get("image") is not None:
        _validate.image_reference(field("image"), params["image"])
    _validate.texts(field("api_keys"), params.get("api_keys"))
    _validate.single_line(field("hf_token"), params.get("hf_token"))
    _validate.gpu_ids(field("gpus"), params.get("gpus"))
    _validate.environment(field("env"), params.get("env"))
    _validate.text_mapping(field("model_path_map"), params.get("model_path_map"))
    _validate.port(field("port"), params.get("port"))
    for name, minimum, maximum, above in NUMBERS:
        _validate.number(field(name), params.get(name), minimum, maximum, above_minimum=above)
    _validate.argument_values(field("extra_args"), params.get("extra_args"))
    drain, stop = params.get("shutdown_timeout"), params.get("stop_timeout")
    if drain and stop is not None and stop <= drain:
        raise _validate.InputError(
            "%s: %s s does not exceed %s (%s s): Docker or systemd would kill vLLM while it lets its requests finish; "
            "give %s at least %d" % (field("stop_timeout"), stop, field("shutdown_timeout"), drain,
                                     field("stop_timeout"), drain + 5))
